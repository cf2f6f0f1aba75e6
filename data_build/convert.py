"""One slice -> one serialised record: `make_example(case, options) -> Converted | Skip`.

Pure and picklable: it runs in the build's worker processes, so it must never import
TensorFlow (each worker would then cost hundreds of MB and seconds to start). The record bytes
come from `schema.encode_example`, the hand-written `tf.train.Example` encoder.

- Render cases keep each window's ORIGINAL JPEG bytes (no re-encode, no generation loss); every
  file is decoded once here only to prove it is readable and that the four windows agree in size.
- DICOM cases store HU, rounded to integers, as a lossless 16-bit PNG of ``HU + HU_OFFSET``;
  windowing happens at read time (`fusion.data`) with the manifest's presets.
- Masks are rasterised from the case's polygons at the image's size and stored as 8-bit PNG
  0/255. ``polygons is None`` = unknown (no mask stored); ``()`` = known empty (normal slices).
"""
from __future__ import annotations

import functools
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import cv2
import numpy as np

from data_build import dicom, locations, polygons, schema, windows
from data_build.cases import Case, Skip

#: Case sources `make_example` understands.
SOURCES: tuple[str, ...] = ("render", "dicom")

#: A JPEG ends with the EOI marker; a truncated file usually does not (libjpeg would still
#: "decode" it with a warning and grey padding, TensorFlow's decoder would fail at train time).
#: Bytes after the EOI (padding some tools add) are allowed: every decoder stops at the EOI.
_JPEG_EOI = b"\xff\xd9"
_SOS = 0xDA

#: Colour components `tf.io.decode_jpeg(channels=1)` (the training reader) can turn into grey:
#: 1 (grey) and 3 (YCbCr). libjpeg has no CMYK/YCCK (4) -> grey conversion: TensorFlow fails
#: with "Unsupported color conversion request" where OpenCV converts silently.
_READER_COMPONENTS = (1, 3)

#: libjpeg warnings that mean damaged entropy-coded data: it then fills rows with grey and goes
#: on, so the image "decodes" (OpenCV and TensorFlow alike) but holds made-up pixels.
_LIBJPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG", "Inconsistent progression",
                   "Invalid SOS parameters", "Bogus")

_INT16_MIN, _INT16_MAX = -32768, 32767


def _default_presets() -> dict[str, tuple[float, float]]:
    return {name: (w.level, w.width) for name, w in windows.PRESETS.items()}


@dataclass(frozen=True)
class ConvertOptions:
    """How cases become records.

    Attributes:
      source: "render" (store the four window JPEGs) or "dicom" (store HU from the DICOM).
      presets: window name -> (level, width) in HU. Not used to write pixels (renders are
        already windowed, HU is windowed at read time) but carried so a build's options are
        one object; `records.build` writes them to the manifest.
    """

    source: str = "render"
    presets: Mapping[str, tuple[float, float]] = field(default_factory=_default_presets)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


@dataclass(frozen=True)
class Converted:
    """A slice turned into a record, with what the manifest needs to count it.

    Attributes:
      id: slice id.
      group: split group (`Case.group`).
      serialized: `tf.train.Example` bytes.
      source: "render" or "dicom".
      folder_type: render folder type, "" when unknown.
      labels: 0/1 per `schema.LABEL_NAMES`, None when unknown.
      has_mask: whether a (possibly empty) mask is known.
      area_pixels: bleed pixels at full resolution (0 when the mask is unknown).
      height, width: image size in pixels.
      skips: mask-level problems (the record is kept, its mask marked unknown).
    """

    id: str
    group: str
    serialized: bytes
    source: str
    folder_type: str
    labels: tuple[int, ...] | None
    has_mask: bool
    area_pixels: float
    height: int
    width: int
    skips: tuple[Skip, ...] = ()


class _CaseSkip(Exception):
    """Internal: abort one case with a `Skip`."""

    def __init__(self, skip: Skip) -> None:
        super().__init__(skip.reason)
        self.skip = skip


def _read_bytes(case_id: str, path: str, what: str) -> bytes:
    try:  # a URL (--engine beam) through Beam's FileSystems, a local path with open()
        return locations.read_bytes(path)
    except FileNotFoundError:
        raise _CaseSkip(Skip(case_id, f"missing-{what}", f"{what} file not found", path)) from None
    except OSError as err:
        raise _CaseSkip(Skip(case_id, f"unreadable-{what}", str(err), path)) from None


#: Start-of-frame markers (baseline, extended, progressive, lossless): they carry the size.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class JpegError(ValueError):
    """A JPEG the training reader would reject or decode to made-up pixels; the message says why."""


@dataclass(frozen=True)
class _JpegFrame:
    height: int
    width: int
    components: int
    scan_start: int  # offset of the first SOS marker, -1 when none was reached


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """The start-of-frame header (size, colour components) and where the first scan starts."""
    i, frame = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == _SOS:
            return frame and _JpegFrame(frame.height, frame.width, frame.components, i)
        if marker in _SOF_MARKERS and i + 10 <= len(data):
            frame = _JpegFrame(int.from_bytes(data[i + 5 : i + 7], "big"),
                               int.from_bytes(data[i + 7 : i + 9], "big"), data[i + 9], -1)
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return frame


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, None when there is none."""
    frame = _jpeg_frame(data)
    return None if frame is None else (frame.height, frame.width)


_scratch: tuple[int, Any] | None = None  # (pid, file) receiving libjpeg's stderr


def _decode_noting_warnings(data: bytes) -> tuple[np.ndarray | None, str]:
    """`cv2.imdecode` at 1/8 scale, and what libjpeg printed to stderr meanwhile.

    libjpeg reports recoverable damage ("Corrupt JPEG data: 1805 extraneous bytes before marker
    0xd9") only as a line on stderr; OpenCV has no hook for it. So fd 2 points at a scratch file
    for the decode (a few microseconds; build workers are single-threaded processes).
    """
    global _scratch
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8
    buffer = np.frombuffer(data, np.uint8)
    try:
        if _scratch is None or _scratch[0] != os.getpid():
            _scratch = (os.getpid(), tempfile.TemporaryFile())
        sink = _scratch[1].fileno()
        os.ftruncate(sink, 0)
        os.lseek(sink, 0, os.SEEK_SET)
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no fd 2 or no temporary folder: decode without the warning check
        return cv2.imdecode(buffer, flags), ""
    try:
        os.dup2(sink, 2)
        image = cv2.imdecode(buffer, flags)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    os.lseek(sink, 0, os.SEEK_SET)
    return image, os.read(sink, 4096).decode("utf-8", "replace")


def check_jpeg_bytes(data: bytes) -> tuple[int, int]:
    """Prove a render JPEG decodes as the training reader decodes it; return (height, width).

    The decode runs at 1/8 scale: libjpeg still reads every entropy-coded block (what breaks
    in a corrupt file) but skips most of the inverse DCT, ~2x faster than a full decode, which
    was nearly all of the build's time per slice.

    Raises:
      JpegError: empty, not a JPEG, CMYK/YCCK (the reader's one-channel decode refuses it),
        not decodable, damaged entropy-coded data (libjpeg's "Corrupt JPEG data" warning), or
        truncated (no EOI after the first scan). Padding after the EOI is accepted.
    """
    if not data:
        raise JpegError("empty file")
    if not data.startswith(b"\xff\xd8"):
        # The reader decodes with tf.io.decode_jpeg: PNG or BMP renders under .jpg would fail.
        raise JpegError("not a JPEG (no SOI marker)")
    frame = _jpeg_frame(data)
    if frame is not None and frame.components not in _READER_COMPONENTS:
        kind = "CMYK/YCCK" if frame.components == 4 else f"{frame.components}-component"
        raise JpegError(f"{kind} JPEG: the training reader (tf.io.decode_jpeg, one channel) cannot "
                        "decode it; save the render as RGB or grey")
    image, printed = _decode_noting_warnings(data)
    if frame is None or image is None or image.size == 0:
        raise JpegError("not a decodable image")
    damage = next((line for line in printed.splitlines() if line.startswith(_LIBJPEG_DAMAGE)), None)
    if damage:
        raise JpegError(f"damaged JPEG, libjpeg says: {damage.strip()}")
    if frame.scan_start < 0 or data.rfind(_JPEG_EOI) < frame.scan_start:
        raise JpegError("truncated JPEG (no EOI marker)")
    return frame.height, frame.width


def _check_jpeg(case_id: str, data: bytes, path: str) -> tuple[int, int]:
    """`check_jpeg_bytes`, a problem becoming a "corrupt-image" skip of the case."""
    try:
        return check_jpeg_bytes(data)
    except JpegError as err:
        raise _CaseSkip(Skip(case_id, "corrupt-image", str(err), path)) from None


def _render_pixels(case: Case) -> tuple[dict[str, Any], int, int]:
    missing = [w for w in windows.WINDOW_NAMES if w not in case.render_paths]
    if missing:
        raise _CaseSkip(
            Skip(case.id, "missing-window", f"no render for {', '.join(missing)}")
        )
    values: dict[str, Any] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for name in windows.WINDOW_NAMES:
        path = str(case.render_paths[name])
        data = _read_bytes(case.id, path, "image")
        sizes[name] = _check_jpeg(case.id, data, path)
        values[schema.image_key(name)] = data
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{n} {h}x{w}" for n, (h, w) in sizes.items())
        raise _CaseSkip(Skip(case.id, "size-mismatch", f"windows differ in size: {detail}"))
    height, width = sizes[windows.WINDOW_NAMES[0]]
    return values, height, width


def encode_hu_png(hu: np.ndarray) -> bytes:
    """HU [H, W] (any real dtype) -> 16-bit PNG of round(HU) + `schema.HU_OFFSET`.

    Values are rounded to integer HU and clipped to int16 (CT never leaves that range), so
    the stored image is exact: decode, subtract the offset, get the rounded HU back.
    """
    rounded = np.clip(np.rint(np.asarray(hu, dtype=np.float64)), _INT16_MIN, _INT16_MAX)
    stored = (rounded.astype(np.int32) + schema.HU_OFFSET).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", stored)
    if not ok:
        raise ValueError(f"cv2 could not encode a {stored.shape} uint16 PNG")
    return encoded.tobytes()


def decode_hu_png(data: bytes) -> np.ndarray:
    """Inverse of `encode_hu_png`: [H, W] int32 HU."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError("not a single-channel 16-bit PNG")
    return image.astype(np.int32) - schema.HU_OFFSET


def _dicom_pixels(case: Case) -> tuple[dict[str, Any], int, int, dicom.DicomMeta]:
    if not case.dicom_path:
        raise _CaseSkip(Skip(case.id, "missing-dicom", "case has no DICOM file"))
    try:
        hu, meta = dicom.read_hu(case.dicom_path)
    except dicom.DicomHeaderError as err:
        raise _CaseSkip(Skip(case.id, "bad-dicom-header", err.reason, str(case.dicom_path))) from None
    except dicom.DicomReadError as err:
        raise _CaseSkip(Skip(case.id, "corrupt-dicom", str(err), str(case.dicom_path))) from None
    height, width = hu.shape
    return {"image/hu": encode_hu_png(hu)}, int(height), int(width), meta


def _mask(case: Case, height: int, width: int) -> tuple[dict[str, Any], bool, float, list[Skip]]:
    """Rasterise the case's polygons: (record values, has_mask, area_pixels, skips)."""
    if case.polygons is None:
        return {"mask": b"", "has_mask": 0, "mask_source": ""}, False, 0.0, []
    try:
        mask01 = polygons.rasterise(case.polygons, height, width)
    except (polygons.PolygonError, ValueError, TypeError) as err:
        skip = Skip(case.id, "bad-polygon", f"mask left unknown: {err}")
        return {"mask": b"", "has_mask": 0, "mask_source": ""}, False, 0.0, [skip]
    area = float(np.count_nonzero(mask01))
    png = _mask_png(mask01) if area else _empty_mask_png(height, width)
    values = {"mask": png, "has_mask": 1, "mask_source": case.mask_source or ""}
    return values, True, area, []


def _mask_png(mask01: np.ndarray) -> bytes:
    """[H, W] 0/1 mask -> 8-bit PNG of 0/255."""
    ok, encoded = cv2.imencode(".png", (mask01 > 0).astype(np.uint8) * 255)
    if not ok:
        raise ValueError(f"cv2 could not encode a {mask01.shape} mask PNG")
    return encoded.tobytes()


@functools.lru_cache(maxsize=8)
def _empty_mask_png(height: int, width: int) -> bytes:
    """The PNG of an all-zero mask, encoded once per size: most slices are known empty
    (normal), and encoding 512x512 zeros cost ~1 ms a slice (issue 14). Same bytes as
    `_mask_png` of zeros (the encoder is deterministic)."""
    return _mask_png(np.zeros((height, width), np.uint8))


def _convert(case: Case, options: ConvertOptions) -> Converted:
    values: dict[str, Any] = {}
    pixel_spacing = case.pixel_spacing
    position = case.position
    patient_id, study_id, series_id = case.patient_id, case.study_id, case.series_id
    if options.source == "render":
        pixels, height, width = _render_pixels(case)
    else:
        pixels, height, width, meta = _dicom_pixels(case)
        # The header read with the pixels fills what discovery did not know.
        pixel_spacing = pixel_spacing or meta.pixel_spacing
        position = position or meta.position
        patient_id = patient_id or meta.patient_id
        study_id = study_id or meta.study_id
        series_id = series_id or meta.series_id
    values.update(pixels)

    mask_values, has_mask, area_pixels, skips = _mask(case, height, width)
    values.update(mask_values)

    has_spacing = pixel_spacing is not None and all(s > 0 for s in pixel_spacing)
    area_mm2 = area_pixels * pixel_spacing[0] * pixel_spacing[1] if has_spacing else 0.0
    labels = tuple(int(v) for v in case.labels) if case.labels is not None else None
    if labels is not None and len(labels) != len(schema.LABEL_NAMES):
        raise _CaseSkip(
            Skip(case.id, "bad-labels", f"expected {len(schema.LABEL_NAMES)} labels, got {labels}")
        )
    values.update(
        {
            "id": case.id,
            "patient_id": patient_id,
            "study_id": study_id,
            "series_id": series_id,
            "source": options.source,
            "folder_type": case.folder_type or "",
            "height": height,
            "width": width,
            "labels": labels if labels is not None else (0,) * len(schema.LABEL_NAMES),
            "has_labels": int(labels is not None),
            "area_pixels": area_pixels,
            "area_mm2": area_mm2,
            "has_area": int(has_mask),
            "has_area_mm2": int(has_mask and has_spacing),
            "pixel_spacing": tuple(pixel_spacing) if has_spacing else (0.0, 0.0),
            "has_spacing": int(has_spacing),
            "position": tuple(position) if position is not None else (0.0, 0.0, 0.0),
            "has_position": int(position is not None),
        }
    )
    # The case's group may gain a patient id from the DICOM header read above; splits are
    # assigned before conversion from `case.group`, so report that one to stay consistent.
    return Converted(
        id=case.id,
        group=case.group,
        serialized=schema.encode_example(values),
        source=options.source,
        folder_type=case.folder_type or "",
        labels=labels,
        has_mask=has_mask,
        area_pixels=area_pixels,
        height=height,
        width=width,
        skips=tuple(skips),
    )


def make_example(case: Case, options: ConvertOptions | None = None) -> Converted | Skip:
    """Convert one case into a record.

    Args:
      case: the slice (paths and metadata, see `cases.Case`).
      options: source and presets; default render with the standard presets.

    Returns:
      `Converted` with the record bytes, or `Skip` naming why the slice was left out
      ("missing-window", "missing-image", "corrupt-image", "size-mismatch", "missing-dicom",
      "corrupt-dicom", "bad-dicom-header", "bad-labels", "error"). A bad polygon keeps the
      record (mask unknown) and is listed in ``Converted.skips`` as "bad-polygon".
    """
    options = options or ConvertOptions()
    try:
        return _convert(case, options)
    except _CaseSkip as stop:
        return stop.skip
    except schema.SchemaError as err:
        return Skip(case.id, "bad-record", str(err))
    except Exception as err:  # one odd file must not end a build of 100k slices
        return Skip(case.id, "error", f"{type(err).__name__}: {err}")
