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
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from data_build import locations
from data_build.errors import DataBuildError

#: Install hint for compressed transfer syntaxes (JPEG lossless, JPEG 2000, RLE ...).
PLUGIN_HINT = (
    "install a pixel-data plugin: `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
    "(or `pip install python-gdcm`)"
)


class DicomReadError(DataBuildError, ValueError):
    """A DICOM file cannot be read: not DICOM, truncated, no pixel data, or no decoder."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read DICOM {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep (path, reason) across process boundaries (workers raise, the parent reports).
        return (type(self), (self.path, self.reason))


class DicomHeaderError(DicomReadError):
    """Pixels readable, but header values make HU untrustworthy (NaN/zero/huge RescaleSlope,
    NaN RescaleIntercept, no RescaleIntercept on unsigned pixel data)."""


#: Stored HU are int16 (`convert.encode_hu_png`): a rescale that leaves this range is nonsense.
_HU_RANGE = (-32768.0, 32767.0)


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
      problems: header values dropped as nonsense (a non-finite or non-positive PixelSpacing,
        a non-finite ImagePositionPatient): the field reads None, as when absent.
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
    problems: tuple[str, ...] = ()
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


def _or(value: float | None, default: float) -> float:
    """`default` only when absent: a slope of 0 must stay 0 (and be refused), not become 1."""
    return default if value is None else value


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return items if len(items) == n else None


def _checked(
    values: tuple[float, ...] | None, keyword: str, positive: bool, problems: list[str]
) -> tuple[float, ...] | None:
    """`values` when finite (and > 0 if `positive`), else None with a note in `problems`."""
    if values is None:
        return None
    good = all(np.isfinite(v) and (v > 0 or not positive) for v in values)
    if not good:
        need = "finite and > 0" if positive else "finite"
        problems.append(f"{keyword} {list(values)} is not {need}; left unknown")
        return None
    return values


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _meta(ds: pydicom.Dataset, path: Path | str) -> DicomMeta:
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise DicomReadError(path, "no Rows/Columns in the header: not an image slice")
    instance = _float_or_none(ds.get("InstanceNumber"))
    problems: list[str] = []
    spacing = _checked(_floats(ds.get("PixelSpacing"), 2), "PixelSpacing", True, problems)
    position = _checked(_floats(ds.get("ImagePositionPatient"), 3), "ImagePositionPatient",
                        False, problems)
    acquisition = _float_or_none(ds.get("AcquisitionNumber"))
    return DicomMeta(
        id=_text(ds, "SOPInstanceUID") or Path(path).stem,
        patient_id=_text(ds, "PatientID"),
        study_id=_text(ds, "StudyInstanceUID"),
        series_id=_text(ds, "SeriesInstanceUID"),
        rows=int(rows),
        cols=int(cols),
        pixel_spacing=spacing,  # type: ignore[arg-type]
        position=position,  # type: ignore[arg-type]
        slice_thickness=_float_or_none(ds.get("SliceThickness")),
        instance_number=None if instance is None else int(instance),
        window_center=_float_or_none(ds.get("WindowCenter")),
        window_width=_float_or_none(ds.get("WindowWidth")),
        rescale_slope=_or(_float_or_none(ds.get("RescaleSlope")), 1.0),
        rescale_intercept=_or(_float_or_none(ds.get("RescaleIntercept")), 0.0),
        bits_stored=int(ds.get("BitsStored") or 16),
        pixel_representation=int(ds.get("PixelRepresentation") or 0),
        problems=tuple(problems),
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


def _read(path: Path | str, stop_before_pixels: bool) -> pydicom.Dataset:
    if isinstance(path, str):  # a URL (--engine beam): its bytes through Beam's FileSystems
        try:
            return _read_source(io.BytesIO(locations.read_bytes(path)), path, stop_before_pixels)
        except FileNotFoundError:
            raise DicomReadError(path, "no such file") from None
        except OSError as err:
            raise DicomReadError(path, f"cannot read it ({err})") from None
    if not path.is_file():
        raise DicomReadError(path, "no such file")
    return _read_source(path, path, stop_before_pixels)


def _read_source(source: Any, path: Path | str, stop_before_pixels: bool) -> pydicom.Dataset:
    """`pydicom.dcmread` of `source` (a local path or the file's bytes), forced when it has no
    preamble but looks like an image; `path` names the file in errors."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        return pydicom.dcmread(source, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass  # maybe a DICOM without the 128-byte preamble: retry forced, then check
    except (EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise DicomReadError(path, f"truncated or corrupt header ({err})") from None
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=stop_before_pixels, force=True)
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
    path = locations.path_or_url(path)  # a URL stays a string: `_read` opens it
    with _quiet():
        return _meta(_read(path, stop_before_pixels=True), path)


def _stored(ds: pydicom.Dataset, path: Path | str) -> np.ndarray:
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
    path = locations.path_or_url(path)  # a URL stays a string: `_read` opens it
    with _quiet():
        ds = _read(path, stop_before_pixels=False)
        meta = _meta(ds, path)
        _check_rescale(ds, meta, path)
        stored = _stored(ds, path).astype(np.int32)
    intercept = meta.rescale_intercept
    if needs_rsna_fix(meta.bits_stored, meta.pixel_representation, intercept):
        stored = stored + 1000
        stored[stored >= 4096] -= 4096
        intercept = -1000.0
    hu = stored.astype(np.float32) * np.float32(meta.rescale_slope) + np.float32(intercept)
    low, high = (float(hu.min()), float(hu.max())) if hu.size else (0.0, 0.0)
    if low < _HU_RANGE[0] or high > _HU_RANGE[1]:
        raise DicomHeaderError(
            path, f"HU {low:g}..{high:g} with RescaleSlope {meta.rescale_slope:g} and "
            f"RescaleIntercept {meta.rescale_intercept:g} leave the int16 range: the header's "
            "rescale values are not plausible"
        )
    return hu, meta


def _check_rescale(ds: pydicom.Dataset, meta: DicomMeta, path: Path | str) -> None:
    """Refuse rescale values that would store made-up HU (`DicomMeta` reads absent as 1 / 0).

    Raises:
      DicomHeaderError: RescaleSlope present but not a finite non-zero number, RescaleIntercept
        present but not finite, or RescaleIntercept absent on unsigned pixel data (stored values
        >= 0 cannot hold air at -1000 HU without one; 0 would shift every HU silently).
    """
    if "RescaleSlope" in ds:
        slope = _float_or_none(ds.get("RescaleSlope"))
        if slope is None or not np.isfinite(slope) or slope == 0:
            raise DicomHeaderError(path, f"RescaleSlope {ds.get('RescaleSlope')!s} is not a finite, "
                                   "non-zero number: HU cannot be computed")
    if "RescaleIntercept" in ds:
        intercept = _float_or_none(ds.get("RescaleIntercept"))
        if intercept is None or not np.isfinite(intercept):
            raise DicomHeaderError(path, f"RescaleIntercept {ds.get('RescaleIntercept')!s} is not "
                                   "a finite number: HU cannot be computed")
    elif meta.pixel_representation == 0:
        raise DicomHeaderError(path, f"no RescaleIntercept on unsigned {meta.bits_stored}-bit "
                               "pixel data: HU cannot be known (air would not be -1000)")
