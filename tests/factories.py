"""The tests' one DICOM writer, `write_ct`, and the prediction tests' series slices on top of it.

tests/ is on sys.path under pytest, so test modules and conftest import this as ``factories``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import FileMetaDataset, validate_file_meta
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: Image size of the prediction tests' slices.
S = 32
CT_IMAGE_STORAGE = CTImageStorage


def _standard_tags(stored: np.ndarray, bits_stored: int, signed: bool) -> dict[str, Any]:
    """The header every `write_ct` slice starts from: one patient, study and series, HU = stored - 1024."""
    rows, cols = stored.shape
    return {
        "SOPClassUID": CTImageStorage,
        "PatientID": "ID_patient1",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "Modality": "CT",
        "Rows": rows,
        "Columns": cols,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16,
        "BitsStored": bits_stored,
        "HighBit": bits_stored - 1,
        "PixelRepresentation": 1 if signed else 0,
        "RescaleIntercept": -1024,
        "RescaleSlope": 1,
        "PixelSpacing": [0.5, 0.25],  # (row, column) mm, unequal so a swapped axis shows
        "ImagePositionPatient": [-125.0, -120.5, 62.75],
    }


def _pixel_bytes(stored: np.ndarray, signed: bool) -> bytes:
    """`stored` as int16 (signed) or uint16 bytes; refuses values the dtype would silently wrap."""
    dtype = np.dtype(np.int16 if signed else np.uint16)
    info = np.iinfo(dtype)
    if stored.size and (stored.min() < info.min or stored.max() > info.max):
        raise ValueError(f"stored values span [{stored.min()}, {stored.max()}], outside {dtype.name}: "
                         "pass signed=False for unsigned data or change the intercept")
    return stored.astype(dtype).tobytes()


def write_ct(
    path: Path,
    stored: np.ndarray,
    *,
    bits_stored: int = 16,
    signed: bool = True,
    syntax: str = ExplicitVRLittleEndian,
    with_pixels: bool = True,
    **tags: Any,
) -> Path:
    """Write a single-frame CT Image Storage slice; parent folders are created.

    Args:
        path: Where the file goes.
        stored: (rows, cols) stored pixel values (not HU: HU = stored * slope + intercept, and the
            default header has intercept -1024, slope 1); written as int16 or uint16 per `signed`,
            truncated toward zero when given as floats.
        bits_stored: BitsStored; HighBit follows. BitsAllocated is always 16.
        signed: PixelRepresentation 1 (int16) or 0 (uint16).
        syntax: The transfer syntax UID (uncompressed little endian, explicit or implicit VR).
        with_pixels: False leaves out PixelData (a header-only file).
        **tags: DICOM keywords that override the standard header (see `_standard_tags`); a value
            of None removes the tag. A SOPInstanceUID that is not a valid UID (RSNA's ``ID_...``)
            is kept in the dataset while the file meta gets a generated one.

    Returns:
        `path`.

    Raises:
        ValueError: `stored` is not 2-D or does not fit its dtype, or a key is not a DICOM keyword.
    """
    stored = np.asarray(stored)
    if stored.ndim != 2:
        raise ValueError(f"stored must be a 2-D (rows, cols) array, got shape {stored.shape}")
    unknown = sorted(k for k in tags if tag_for_keyword(k) is None)
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    sop_uid = tags.get("SOPInstanceUID")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = tags.get("SOPClassUID") or CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid if sop_uid and UID(sop_uid).is_valid else generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    header = _standard_tags(stored, bits_stored, signed)
    header["SOPInstanceUID"] = meta.MediaStorageSOPInstanceUID
    if with_pixels:
        header["PixelData"] = _pixel_bytes(stored, signed)
    header.update(tags)
    for keyword, value in header.items():
        if value is not None:
            setattr(ds, keyword, value)
    # enforce_file_format=True would copy an invalid SOPInstanceUID into the file meta, so the
    # standard meta (version, implementation UID, group length) and preamble are completed here.
    validate_file_meta(meta, enforce_standard=True)
    meta.FileMetaInformationGroupLength = 0  # the writer fills in the real length
    ds.preamble = b"\0" * 128
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=False)
    return path


def write_dicom(
    path: Path,
    hu: np.ndarray,
    series_uid: str,
    sop_uid: str | None = None,
    z: float | None = 0.0,
    instance: int | None = None,
    spacing: float = 0.5,
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    acquisition: int | None = None,
    thickness: float = 1.0,
) -> Path:
    """A slice of a prediction-test series: `hu` (rows, cols) stored as HU + 1024, intercept -1024.

    ``position`` (IPP) overrides ``(-8, -8, z)``; None for both leaves IPP out. Every slice shares one
    FrameOfReferenceUID (a DICOM-SEG needs it) and patient/study ids."""
    if position is None and z is not None:
        position = (-8.0, -8.0, z)
    # No sop_uid means a generated one, which is write_ct's default (None there would remove the tag).
    sop = {"SOPInstanceUID": sop_uid} if sop_uid else {}
    return write_ct(
        path, np.asarray(hu) + 1024, **sop,
        PatientID="P1", SeriesInstanceUID=series_uid,
        PixelSpacing=[spacing, spacing], FrameOfReferenceUID="1.2.3.9",
        ImagePositionPatient=None if position is None else list(position),
        ImageOrientationPatient=None if orientation is None else list(orientation),
        InstanceNumber=instance, AcquisitionNumber=acquisition, SliceThickness=thickness,
    )


def deny_listing(monkeypatch: Any, name: str = "locked") -> None:
    """Make every folder called `name` unlistable (PermissionError from os.scandir).

    Tests run as root, which reads any folder whatever its mode, so the failure is simulated.
    """
    import os

    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> Any:
        if Path(path).name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
