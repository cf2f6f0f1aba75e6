"""Raw DICOM slices -> Hounsfield units, and header-only metadata.

``HU = stored * RescaleSlope + RescaleIntercept``, computed in int32 / float32 (never in the
stored uint16, where the subtraction would wrap).

RSNA 12-bit quirk: some RSNA 2019 slices have ``BitsStored`` 12, ``PixelRepresentation`` 0 and
an intercept above -100; their stored values are offset and wrap. The fix used throughout the
RSNA 2019 Intracranial Hemorrhage Kaggle competition (``correct_dcm`` in Ryan Epp's public
notebook "Gradient & Sigmoid Windowing", reused by many solutions) is applied exactly::

    x = stored + 1000            # in int32 here; 4095 + 1000 fits the notebook's uint16 too
    x[x >= 4096] -= 4096         # wrap at 4096
    intercept = -1000

`DicomMeta` always reports the header's own values (read_meta and read_hu agree); the
corrected intercept is used internally only.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

#: Install hint for compressed transfer syntaxes (JPEG lossless, JPEG 2000, RLE ...).
PLUGIN_HINT = (
    "install a pixel-data plugin: `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
    "(or `pip install python-gdcm`)"
)


class DicomReadError(ValueError):
    """A DICOM file cannot be read: not DICOM, truncated, no pixel data, or no decoder."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read DICOM {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep (path, reason) across process boundaries (workers raise, the parent reports).
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class DicomMeta:
    """Header fields of one slice.

    Attributes:
      id: SOPInstanceUID (``ID_xxxxxxxxx`` in RSNA), else the file stem.
      patient_id, study_id, series_id: PatientID, StudyInstanceUID, SeriesInstanceUID or "".
      rows, cols: image size in pixels.
      pixel_spacing: (row, col) mm per pixel, None when absent.
      position: ImagePositionPatient (x, y, z) mm, None when absent.
      slice_thickness: mm, None when absent.
      instance_number: None when absent.
      window_center, window_width: HU, the first value when the tag is multi-valued.
      rescale_slope, rescale_intercept: as in the header (1 and 0 when absent).
      bits_stored: BitsStored.
      pixel_representation: 0 unsigned, 1 signed.
      orientation: ImageOrientationPatient (row direction x, y, z, column direction x, y, z),
        direction cosines in the patient's LPS frame, None when absent or malformed.
      acquisition_number: AcquisitionNumber, None when absent (two values in one series mean
        two stacks, `fusion.series`).
    """

    id: str
    patient_id: str
    study_id: str
    series_id: str
    rows: int
    cols: int
    pixel_spacing: tuple[float, float] | None
    position: tuple[float, float, float] | None
    slice_thickness: float | None
    instance_number: int | None
    window_center: float | None
    window_width: float | None
    rescale_slope: float
    rescale_intercept: float
    bits_stored: int
    pixel_representation: int
    orientation: tuple[float, float, float, float, float, float] | None = None
    acquisition_number: int | None = None


def needs_rsna_fix(bits_stored: int, pixel_representation: int, intercept: float) -> bool:
    """True for the RSNA 12-bit wrapped slices (see module docstring)."""
    return bits_stored == 12 and pixel_representation == 0 and intercept > -100


def _first(value: Any) -> Any:
    if isinstance(value, (MultiValue, list, tuple)):
        return value[0] if len(value) else None
    return value


def _float_or_none(value: Any) -> float | None:
    value = _first(value)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return items if len(items) == n else None


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _meta(ds: pydicom.Dataset, path: Path) -> DicomMeta:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise DicomReadError(path, "no Rows/Columns in the header: not an image slice")
    instance = _float_or_none(ds.get("InstanceNumber"))
    acquisition = _float_or_none(ds.get("AcquisitionNumber"))
    return DicomMeta(
        id=_text(ds, "SOPInstanceUID") or path.stem,
        patient_id=_text(ds, "PatientID"),
        study_id=_text(ds, "StudyInstanceUID"),
        series_id=_text(ds, "SeriesInstanceUID"),
        rows=int(rows),
        cols=int(cols),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        slice_thickness=_float_or_none(ds.get("SliceThickness")),
        instance_number=None if instance is None else int(instance),
        window_center=_float_or_none(ds.get("WindowCenter")),
        window_width=_float_or_none(ds.get("WindowWidth")),
        rescale_slope=_float_or_none(ds.get("RescaleSlope")) or 1.0,
        rescale_intercept=_float_or_none(ds.get("RescaleIntercept")) or 0.0,
        bits_stored=int(ds.get("BitsStored") or 16),
        pixel_representation=int(ds.get("PixelRepresentation") or 0),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        acquisition_number=None if acquisition is None else int(acquisition),
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # RSNA files carry ids such as "ID_0002081b6" in UI elements; pydicom warns and logs on
    # every access. The values are fine for our use (ids), so that is noise: skip validation
    # while we read (restored afterwards; workers are processes, not threads).
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        settings.reading_validation_mode = previous


def _read(path: Path, stop_before_pixels: bool) -> pydicom.Dataset:
    if not path.is_file():
        raise DicomReadError(path, "no such file")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass  # maybe a DICOM without the 128-byte preamble: retry forced, then check
    except (EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise DicomReadError(path, f"truncated or corrupt header ({err})") from None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        looks_like_image = "Rows" in ds and ("SOPClassUID" in ds or "PixelData" in ds)
    except Exception as err:  # forced parsing of arbitrary bytes may fail in any way
        raise DicomReadError(path, f"not a DICOM file ({type(err).__name__})") from None
    if not looks_like_image:
        raise DicomReadError(path, "not a DICOM file (no DICM preamble, no image header)")
    return ds


def read_meta(path: str | Path) -> DicomMeta:
    """Read a slice's header only (pixel data is not loaded; ~1 ms a file).

    Raises:
      DicomReadError: the file is missing, not DICOM, or its header is truncated.
    """
    path = Path(path)
    with _quiet():
        return _meta(_read(path, stop_before_pixels=True), path)


def _stored(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    if "PixelData" not in ds:
        raise DicomReadError(path, "no pixel data element (7FE0,0010)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        if syntax is not None and syntax.is_compressed:
            raise DicomReadError(
                path, f"pixel data compressed as {syntax.name}; {PLUGIN_HINT}"
            ) from None
        raise DicomReadError(path, f"cannot decode pixel data ({err})") from None
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as err:
        raise DicomReadError(path, f"truncated or corrupt pixel data ({err})") from None
    if pixels.ndim != 2:
        raise DicomReadError(
            path, f"expected one grey-level frame [H, W], got pixel array shape {pixels.shape}"
        )
    return pixels


def read_hu(path: str | Path) -> tuple[np.ndarray, DicomMeta]:
    """Read a slice in Hounsfield units.

    Args:
      path: a single-frame grey-level CT DICOM.

    Returns:
      (hu, meta): hu is [H, W] float32 in HU (air ~ -1000, water 0, bone up to ~+3000; RSNA
      pads outside the scan field with about -2000 to -3024); meta as `read_meta`.

    Raises:
      DicomReadError: not DICOM, truncated, no pixel data, compressed without a decoder
        (the message names the plugin to install), or not a single grey-level frame.
    """
    path = Path(path)
    with _quiet():
        ds = _read(path, stop_before_pixels=False)
        meta = _meta(ds, path)
        stored = _stored(ds, path).astype(np.int32)
    intercept = meta.rescale_intercept
    if needs_rsna_fix(meta.bits_stored, meta.pixel_representation, intercept):
        stored = stored + 1000
        stored[stored >= 4096] -= 4096
        intercept = -1000.0
    hu = stored.astype(np.float32) * np.float32(meta.rescale_slope) + np.float32(intercept)
    return hu, meta
