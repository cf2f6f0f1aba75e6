"""Series masks as files that viewers and PACS take as they are: NIfTI (nibabel) and DICOM-SEG
(highdicom). PNG masks (one per slice) stay in `fusion.predict`.

NIfTI: one ``.nii.gz`` per stack, uint8 0/1, voxel (i, j, k) = (column, row, slice in geometric
order), the affine built from ImagePositionPatient (IPP), ImageOrientationPatient (IOP) and
PixelSpacing and turned from DICOM's LPS into NIfTI's RAS frame (x and y negated), qform and
sform code 1 (scanner). One affine needs equally spaced slices: a stack with a gap gets no
NIfTI (the reason is in its series row), its DICOM-SEG still carries every frame's position.
Probabilities can follow as ``<stem>_probabilities.nii.gz`` (float32 in [0, 1]).

DICOM-SEG: one BINARY Segmentation per stack whose frames reference the source SOP Instance
UIDs, one segment "Intracranial hemorrhage" (category SCT 49755003 Morphologically abnormal
structure, type SCT 50960005 Hemorrhage, AUTOMATIC, algorithm "fusion"). Every frame is kept
(empty ones too) so frame k is source slice k. The sources must carry a FrameOfReferenceUID
and SOPClassUID (the RSNA 2019 files do not: their SEG is refused with that reason).

Both writers need ``pip install 'fusion[clinical]'`` (nibabel, highdicom).
"""
from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data_build.files import atomic_write_bytes

#: Mask formats of ``fusion-predict --mask-format`` (png is the default).
MASK_FORMATS: tuple[str, ...] = ("png", "nifti", "dicom-seg")
#: Formats that need a DICOM series' geometry.
GEOMETRY_FORMATS: tuple[str, ...] = ("nifti", "dicom-seg")
#: LPS (DICOM) -> RAS (NIfTI): negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SEGMENT_LABEL = "Intracranial hemorrhage"
#: Type-2 attributes highdicom copies from the sources; empty is a valid value for each.
_TYPE2_DEFAULTS = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "StudyID", "ReferringPhysicianName", "AccessionNumber")


class MaskFormatError(ValueError):
    """A mask file cannot be made for this series (the message says why)."""


@dataclass(frozen=True)
class SliceGeometry:
    """Where one slice sits. Lengths in mm, directions in the patient's LPS frame.

    Attributes:
      position: ImagePositionPatient (x, y, z) of the first pixel's centre.
      orientation: IOP (row cosine x, y, z, column cosine x, y, z).
      pixel_spacing: (row spacing, column spacing): between rows, between columns.
    """

    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]


def parse_formats(values: Iterable[str]) -> tuple[str, ...]:
    """``("png,nifti", "dicom-seg")`` -> ``("png", "nifti", "dicom-seg")`` (order kept, no
    repeats). Raises MaskFormatError naming an unknown format and the known ones."""
    out: list[str] = []
    for value in values:
        for name in (v.strip().lower() for v in value.split(",")):
            if not name:
                continue
            if name not in MASK_FORMATS:
                raise MaskFormatError(f"unknown mask format {name!r}; choose from "
                                      f"{', '.join(MASK_FORMATS)}")
            if name not in out:
                out.append(name)
    return tuple(out) or ("png",)


def require_clinical(formats: Sequence[str]) -> None:
    """Raise MaskFormatError with the install command when a format's library is missing."""
    needed = {"nifti": "nibabel", "dicom-seg": "highdicom"}
    for fmt in formats:
        if fmt in needed:
            try:
                __import__(needed[fmt])
            except ImportError:
                raise MaskFormatError(
                    f"--mask-format {fmt} needs {needed[fmt]}: pip install 'fusion[clinical]'"
                ) from None


def nifti_affine(geometry: Sequence[SliceGeometry], thickness: float | None = None) -> np.ndarray:
    """4x4 RAS affine of voxel (column, row, slice) for equally spaced slices in order.

    Args:
      geometry: one entry per slice, in the volume's slice order.
      thickness: slice step (mm) along the normal for a single slice (default 1).

    Returns:
      float64 [4, 4]: RAS mm = affine @ (i, j, k, 1).
    """
    first = geometry[0]
    iop = np.asarray(first.orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    row_mm, col_mm = first.pixel_spacing
    origin = np.asarray(first.position, dtype=np.float64)
    if len(geometry) > 1:
        step = (np.asarray(geometry[-1].position, np.float64) - origin) / (len(geometry) - 1)
    else:
        normal = np.cross(row_dir, col_dir)
        step = normal * (thickness or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm  # i: along a row, towards increasing column
    lps[:3, 1] = col_dir * row_mm  # j: down a column, towards increasing row
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def nifti_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file of ``volume`` [N, H, W] (slice, row, column) with ``affine``."""
    import nibabel as nib

    data = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))  # -> [W, H, N] = (i, j, k)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def equally_spaced(geometry: Sequence[SliceGeometry]) -> bool:
    """True when consecutive slices are one and the same step apart (within 1 % or 0.01 mm
    per axis), so that one affine places them all; one slice is equally spaced."""
    if len(geometry) < 3:
        return True
    pos = np.asarray([g.position for g in geometry], dtype=np.float64)
    steps = np.diff(pos, axis=0)  # [N-1, 3]
    mean = steps.mean(axis=0)
    tol = max(0.01, 0.01 * float(np.linalg.norm(mean)))
    return bool(np.all(np.linalg.norm(steps - mean, axis=1) <= tol))


def write_nifti(
    out: Path, stem: str, masks: np.ndarray, geometry: Sequence[SliceGeometry] | None,
    thickness: float | None = None, probabilities: np.ndarray | None = None,
) -> list[str]:
    """Write ``out/<stem>.nii.gz`` (and ``<stem>_probabilities.nii.gz``); returns the names.

    Args:
      masks: [N, H, W] bool, slices in geometric order.
      geometry: one `SliceGeometry` per slice, None when a slice lacks IPP, IOP or spacing.
      thickness: mm along the normal for a one-slice volume.
      probabilities: [N, H, W] float32 in [0, 1], or None.

    Raises:
      MaskFormatError: no geometry, or slices not equally spaced.
    """
    if not geometry or len(geometry) != len(masks):
        raise MaskFormatError("NIfTI not written: it needs ImagePositionPatient, "
                              "ImageOrientationPatient and PixelSpacing on every slice")
    if not equally_spaced(geometry):
        raise MaskFormatError("NIfTI not written: the slices are not equally spaced (a gap or "
                              "a missing slice); use the DICOM-SEG or the PNG masks")
    affine = nifti_affine(geometry, thickness)
    names = [f"{stem}.nii.gz"]
    atomic_write_bytes(out / names[0], nifti_bytes(masks.astype(np.uint8), affine))
    if probabilities is not None:
        names.append(f"{stem}_probabilities.nii.gz")
        atomic_write_bytes(out / names[1], nifti_bytes(probabilities.astype(np.float32), affine))
    return names


def _source_headers(paths: Sequence[str]) -> list[Any]:
    """Source headers, completed with empty type-2 attributes highdicom copies."""
    import pydicom
    import pydicom.errors

    from data_build.dicom import _quiet

    headers = []
    with _quiet():
        for path in paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (OSError, EOFError, ValueError, pydicom.errors.InvalidDicomError) as err:
                raise MaskFormatError(f"DICOM-SEG not written: cannot re-read {path} ({err})") from None
            for name in ("FrameOfReferenceUID", "SOPClassUID", "StudyInstanceUID"):
                if not str(ds.get(name, "")).strip():
                    raise MaskFormatError(f"DICOM-SEG not written: {path} has no {name}")
            for name in _TYPE2_DEFAULTS:
                if name not in ds:
                    setattr(ds, name, "")
            if "SliceThickness" not in ds:
                ds.SliceThickness = None  # type 2 in the CT image module: present, empty
            headers.append(ds)
    return headers


def seg_bytes(source_paths: Sequence[str], masks: np.ndarray, version: str) -> bytes:
    """One BINARY DICOM Segmentation of ``masks`` [N, H, W] bool over the N source slices."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = _source_headers(source_paths)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Hemorrhage,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="fusion", version=version, family=codes.cid7162.ArtificialIntelligence),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.asarray(masks, dtype=bool),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=pydicom.uid.generate_uid(),
            series_number=9001,
            sop_instance_uid=pydicom.uid.generate_uid(),
            instance_number=1,
            manufacturer="fusion",
            manufacturer_model_name="fusion hemorrhage model",
            software_versions=version,
            device_serial_number="0",
            series_description="fusion hemorrhage mask",
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        # highdicom checks the sources' attributes as DICOM requires them; say which failed.
        raise MaskFormatError(f"DICOM-SEG not written: {type(err).__name__}: {err}") from None
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def write_seg(out: Path, stem: str, source_paths: Sequence[str], masks: np.ndarray,
              version: str) -> str:
    """Write ``out/<stem>.dcm`` (see `seg_bytes`); returns its name."""
    name = f"{stem}.dcm"
    atomic_write_bytes(out / name, seg_bytes(source_paths, masks, version))
    return name


def _slice_geometry(items: Sequence[Any]) -> list[SliceGeometry] | None:
    """Each slice's geometry, or None when a slice lacks a finite IPP, IOP or PixelSpacing."""
    for it in items:
        for values in (it.position, it.orientation, it.pixel_spacing):
            if values is None or not np.all(np.isfinite(np.asarray(values, np.float64))):
                return None
    return [SliceGeometry(it.position, it.orientation, it.pixel_spacing) for it in items]


def write_series_masks(
    out: Path, stem: str, formats: Sequence[str], items: Sequence[Any],
    masks: Sequence[np.ndarray], preds: Sequence[dict[str, Any]], probabilities: bool,
    no_geometry: list[str],
) -> tuple[dict[str, str | None], list[str]]:
    """Write the NIfTI / DICOM-SEG files of one series of `fusion.predict`.

    Args:
      out: the run's output folder (files go to ``nifti/`` and ``seg/``).
      stem: the series' safe file stem.
      formats: the formats asked for (PNG is written by the caller).
      items: the series' `fusion.predict.SliceInput`s, in geometric order.
      masks: [H, W] bool per slice; preds: the model's outputs per slice (``mask`` [H, W, 1]).
      probabilities: also write the probabilities NIfTI.
      no_geometry: gets the series id when the series is not DICOM (counted by the caller).

    Returns:
      (series-row columns mask_nifti, probabilities_nifti, mask_seg (paths relative to
      ``out`` or None), warnings saying why a file asked for was not written).
    """
    cols: dict[str, str | None] = {"mask_nifti": None, "probabilities_nifti": None,
                                   "mask_seg": None}
    wanted = [f for f in formats if f in GEOMETRY_FORMATS]
    if not wanted:
        return cols, []
    if items[0].source != "dicom":
        no_geometry.append(items[0].series)
        return cols, [f"{' and '.join(wanted)} need a DICOM series: PNG masks written instead"]
    if len({m.shape for m in masks}) != 1 or not all(np.isfinite(p["mask"]).all() for p in preds):
        return cols, [f"no {' or '.join(wanted)}: the model predicts no masks of one size here"]
    stack, notes = np.stack(masks), []
    if "nifti" in wanted:
        prob = np.stack([p["mask"][..., 0] for p in preds]) if probabilities else None
        try:
            written = write_nifti(out / "nifti", stem, stack, _slice_geometry(items),
                                  items[0].slice_thickness, prob)
            cols["mask_nifti"] = f"nifti/{written[0]}"
            cols["probabilities_nifti"] = f"nifti/{written[1]}" if len(written) > 1 else None
        except MaskFormatError as err:
            notes.append(str(err))
    if "dicom-seg" in wanted:
        from fusion import __version__

        try:
            name = write_seg(out / "seg", stem, [it.path for it in items], stack, __version__)
            cols["mask_seg"] = f"seg/{name}"
        except MaskFormatError as err:
            notes.append(str(err))
    return cols, notes
