"""Shards -> training batches with no TensorFlow: NumPy + OpenCV, for every Keras backend.

The same per-example dict as `fusion.data` (docs/design.md "Reader output"), built as follows:

- records: `data_build.tfrecord` reads each record at its byte offset (both CRCs checked), and
  `data_build.examples.parse_example` decodes it with `schema.FIELDS`;
- render windows: `cv2.imdecode` of each JPEG as one channel (its luma) at the largest DCT
  scale (`cv2.IMREAD_REDUCED_GRAYSCALE_2/4/8`) that keeps both sides >= S, the bone colour
  map inverted through `GREY_TABLES` (`data_build.renders.GREY_FROM_LUMA`) once per batch, in
  uint8 until then. A window whose decoded size is not S is resized as grey with TensorFlow's
  antialiased bilinear filter (`resize_bilinear`) and carried rounded to 1/255;
- DICOM records: the HU PNG, resized, windowed with `windows.apply_windows` and the manifest's
  presets;
- masks: area-averaged to S and thresholded at 0.5; targets as `fusion.data._targets`.

`ShardSequence` is a `keras.utils.PyDataset` over a split: records are read by offset, so each
batch is independent; Keras' worker threads or processes share the batches out, and the
records of batch i in epoch e depend only on (seed, e, i), whatever the number of workers.
It yields ``(image, targets)`` packed by `fusion.targets.pack_targets` (as the tf.data path
packs them), or the reader's dict with ``as_dicts=True``; ``augment=`` adds
`fusion.augment_numpy`.

Pixels against the tf.data reader: bit-identical where the JPEG is decoded at a reduced scale
straight to S (libjpeg's scaled IDCTs are the same code in both); at scale 1 TensorFlow uses
libjpeg's fast integer IDCT and OpenCV the accurate one, so values differ by a few grey levels;
after a resize, within 0.5/255 of `fusion.data.preprocess` (tests/test_reader.py holds both).
"""
from __future__ import annotations

import functools
import math
import os
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import keras
import numpy as np

from data_build import renders, schema, windows
from data_build.examples import parse_example
from data_build.manifest import Manifest, ManifestError
from data_build.splits import SPLITS
from data_build.tfrecord import index_records, read_record_at
from fusion.augment_numpy import augment_batch
from fusion.config import HEADS, AugmentConfig
from fusion.errors import FusionError
from fusion.targets import pack_targets

#: Version of what the reader decodes from a record (pixels, masks, targets). Bump it with any
#: change to their values: `fusion.decoded_cache` keys its caches on it, so none goes stale.
READER_VERSION = 1
#: Reduced-scale JPEG decode factors libjpeg supports (1 = full size).
RATIOS: tuple[int, ...] = (1, 2, 4, 8)
#: cv2.imdecode flags per ratio: one channel (the JPEG's luma), EXIF orientation ignored as
#: TensorFlow's decoder ignores it.
_IMREAD = {
    1: cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION,
}
#: [2, 256] float32: row 0 inverts the bone colour map (a colour JPEG's luma -> grey), row 1
#: is a greyscale JPEG's value / 255. Shared with `fusion.data`.
GREY_TABLES = np.stack(
    [renders.GREY_FROM_LUMA.astype(np.float32), np.arange(256, dtype=np.float32) / 255.0]
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class EmptySplitError(FusionError, ValueError):
    """The requested split holds no examples."""


class ReaderError(FusionError, ValueError):
    """A record's content cannot be read (e.g. an image that does not decode)."""


# --- shards and manifest ---------------------------------------------------------------------


def shard_files(shards_dir: str | os.PathLike[str], split: str, manifest: Manifest) -> list[str]:
    """Paths of a split's non-empty shards, in manifest order.

    Raises:
      ValueError: unknown split.
      EmptySplitError: the split holds no examples (the message lists what the manifest holds).
      ManifestError: a listed shard is missing.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = [str(Path(shards_dir) / s.file) for s in manifest.shards_of(split)]
    if not files:
        raise EmptySplitError(
            f"split {split!r} has no examples in {shards_dir} (the manifest holds "
            f"{manifest.held()} slices). Pick a non-empty split, or rebuild with other "
            "--split-fractions or more data."
        )
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise ManifestError(
            f"{len(missing)} shard(s) listed in the manifest are missing, e.g. {missing[0]}; "
            "run fusion-verify and rebuild"
        )
    return files


def jpeg_ratio(height: int, width: int, size: int) -> int:
    """The largest of `RATIOS` whose reduced decode keeps both sides >= size.

    libjpeg scales a side to ceil(side / ratio).
    """
    smallest = min(int(height), int(width))
    return max(r for r in RATIOS if r == 1 or -(-smallest // r) >= size)


def jpeg_components(data: bytes) -> int:
    """Colour components of a JPEG from its frame header (3: colour, 1: grey; 0 if not found)."""
    pos, end = 2, len(data)
    while pos + 9 < end:
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            return data[pos + 9]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return 0


@functools.lru_cache(maxsize=64)
def _bilinear_spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source rows (starts [out], span) and weights [out, span] float32 of TensorFlow's
    antialiased bilinear resize (`tf.image.resize(..., "bilinear", antialias=True)`: a
    triangle kernel widened by the shrink factor, pixel centres at +0.5, weights normalised;
    `tensorflow/core/kernels/image/scale_and_translate_op.cc`), in its float32 arithmetic."""
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))
    span = min(2 * math.ceil(kernel_scale) + 1, in_size)
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span), np.float32)
    for x in range(out_size):
        sample = np.float32(x + 0.5) * inv_scale
        first = max(0, min(in_size - 1, math.ceil(sample - kernel_scale - np.float32(0.5))))
        last = max(0, min(in_size - 1, math.floor(sample + kernel_scale - np.float32(0.5)))) + 1
        sources = np.arange(first, last)
        pos = (sources.astype(np.float32) + np.float32(0.5) - sample) / kernel_scale
        w = np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(pos)).astype(np.float32)
        total = w.sum(dtype=np.float32)
        if total > 0:
            w = w * (np.float32(1.0) / total)
        starts[x] = first
        weights[x, : len(w)] = w
    # Rows past a span's end have weight 0; clip them onto the image so gathers stay in bounds.
    return starts, weights


def _resample(image: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    starts, weights = _bilinear_spans(image.shape[axis], out_size)
    rows = np.minimum(starts[:, None] + np.arange(weights.shape[1]), image.shape[axis] - 1)
    gathered = np.take(image, rows, axis=axis)  # axis -> (out, span)
    w = weights.reshape(weights.shape + (1,) * (image.ndim - axis - 1))
    return (gathered * w).sum(axis=axis + 1, dtype=np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """[h, w] or [h, w, c] float32 -> [size, size(, c)], antialiased when shrinking, as
    `tf.image.resize(..., "bilinear", antialias=True)` (equal to float32 rounding)."""
    image = np.asarray(image, np.float32)
    if image.shape[:2] == (size, size):
        return image
    return _resample(_resample(image, 0, size), 1, size)


@functools.lru_cache(maxsize=64)
def _area_spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices [out, n] (clipped), weights [out, n] float32 and use flags [out, n] of
    TensorFlow's area resize along one axis, as `resize_area_op.cc` computes them in float32:
    output pixel y covers [y * scale, (y + 1) * scale) of the input, scale = in / out."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    rows = []
    for y in range(out_size):
        low, high = f32(y) * scale, f32(y + 1) * scale
        first, end = math.floor(low), math.ceil(high)
        weights = []
        for i in range(first, end):
            if i < low:
                weights.append(scale if i + 1 > high else f32(i + 1) - low)
            else:
                weights.append(high - f32(i) if i + 1 > high else f32(1.0))
        rows.append((first, weights))
    n = max(len(w) for _, w in rows)
    index = np.zeros((out_size, n), np.int64)
    weight = np.zeros((out_size, n), np.float32)
    used = np.zeros((out_size, n), bool)
    for y, (first, w) in enumerate(rows):
        index[y, : len(w)] = np.clip(np.arange(first, first + len(w)), 0, in_size - 1)
        weight[y, : len(w)] = w
        used[y, : len(w)] = True
    return index, weight, used


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """[h, w] float32 -> [size, size] area (box) average, equal to `tf.image.resize(..., "area")`
    bit for bit: the same float32 operations in the same order (its first and last source
    pixels weighted, the ones between added), vectorised over pixels."""
    h, w = image.shape[:2]
    if h == w and h % size == 0 and (h // size) & (h // size - 1) == 0:
        # Power-of-two blocks: OpenCV's box average makes the same exact sums, far faster.
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    image = np.asarray(image, np.float32)
    x_index, x_weight, x_used = _area_spans(w, size)
    # Along x: first pixel x its weight, then the inner pixels added as they are, then the last
    # pixel x its weight (TensorFlow's order; float32 sums depend on it).
    last = x_used.sum(axis=1) - 1
    rows = image[:, x_index[:, 0]] * x_weight[:, 0]
    for k in range(1, x_index.shape[1]):
        inner = x_used[:, k] & (k < last)
        rows = np.where(inner, rows + image[:, x_index[:, k]], rows)
    tail = np.take_along_axis(x_index, last[:, None], 1)[:, 0]
    tail_weight = np.take_along_axis(x_weight, last[:, None], 1)[:, 0]
    rows = np.where(last > 0, rows + image[:, tail] * tail_weight, rows)
    y_index, y_weight, y_used = _area_spans(h, size)
    out = np.zeros((size, size), np.float32)
    for k in range(y_index.shape[1]):
        out = np.where(y_used[:, k, None], out + rows[y_index[:, k]] * y_weight[:, k, None], out)
    area = (np.float32(h) / np.float32(size)) * (np.float32(w) / np.float32(size))  # float32
    scale = np.float32(1.0 / np.float64(area))
    return out * scale


def decode_window(data: bytes, size: int, ratio: int) -> tuple[np.ndarray, int]:
    """One window render JPEG -> (uint8 codes [S, S], table row of `GREY_TABLES`).

    Codes are the decoded luma (table 0 for a bone-mapped colour JPEG, 1 for a greyscale one)
    when the DCT scale gives S x S; otherwise the grey resized to S and rounded to 1/255
    (table 1), within 0.5/255 of the float path.

    Raises:
      ReaderError: the bytes do not decode as a JPEG.
    """
    luma = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD[ratio]) if data else None
    if luma is None:
        raise ReaderError("a window image does not decode as a JPEG")
    table = 0 if jpeg_components(data) == 3 else 1
    if luma.shape == (size, size):
        return luma, table
    grey = resize_bilinear(GREY_TABLES[table][luma], size)
    return np.clip(np.rint(grey * np.float32(255.0)), 0, 255).astype(np.uint8), 1


def codes_to_grey(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 codes [B, S, S, C] + table [B, C] -> grey float32 [B, S, S, C] (one LUT).

    OpenCV's lookup (vectorised, GIL released) writes the float32 batch once: over the whole
    batch when every window uses one table, else per slice with one table per channel.
    """
    if codes.size == 0:
        return np.zeros(codes.shape, np.float32)
    codes = np.ascontiguousarray(codes)
    table = np.asarray(table)
    b, h, w, c = codes.shape
    if (table == table.flat[0]).all():
        lut = GREY_TABLES[int(table.flat[0])]
        return cv2.LUT(codes.reshape(b * h, w * c), lut).reshape(codes.shape)
    out = np.empty(codes.shape, np.float32)
    for i in range(b):
        # A C-channel table [256, 1, C]: channel j looks up in its own row of GREY_TABLES.
        lut = np.ascontiguousarray(GREY_TABLES[table[i]].T).reshape(256, 1, c)
        out[i] = cv2.LUT(codes[i], lut).reshape(h, w, c)  # OpenCV drops a channel axis of 1
    return out


def png_grey8(data: bytes) -> np.ndarray | None:
    """An 8-bit greyscale, non-interlaced PNG whose rows use filter None or Sub -> [H, W] uint8;
    None for any other PNG (decode it with OpenCV).

    That is what `cv2.imencode(".png", ...)` writes for the build's masks (libpng with
    PNG_FILTER_SUB, `data_build.convert`): one zlib inflate and one wrapping cumulative sum per
    row, ~4x faster than libpng's row-by-row decode, and equal to it (tests/test_reader.py).
    Only IHDR, IDAT and IEND may be present, so no ancillary chunk (gamma, palette) is ignored.
    """
    if data[:8] != _PNG_SIGNATURE:
        return None
    pos, header, idat = 8, b"", []
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        else:
            return None
        pos += 12 + length
    if len(header) != 13:
        return None
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    if header[8:13] != b"\x08\x00\x00\x00\x00":  # depth 8, grey, deflate, filter 0, no interlace
        return None
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    if width == 0 or len(raw) != height * (width + 1):
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    filters = rows[:, 0]
    if (filters > 1).any():  # Up, Average, Paeth: leave them to libpng
        return None
    out = rows[:, 1:].copy()
    # Sub: each byte adds the one to its left, modulo 256. NumPy's cumulative sum is the slow
    # part (~2.5 ns a byte), and a mask's rows outside the bleed are zeros either way: skip them.
    sub = (filters == 1) & out.any(axis=1)
    if sub.any():
        out[sub] = np.cumsum(out[sub], axis=1, dtype=np.uint8)
    return out


def _png(data: bytes, flags: int, what: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None:
        raise ReaderError(f"{what} does not decode as a PNG")
    return image


def mask_u8(record: Mapping[str, Any], size: int) -> np.ndarray:
    """Mask PNG -> [S, S, 1] uint8 0/1; zeros when unknown or known empty (no decode).

    Area averaging then >= 0.5: a pixel is bleed when most of what it covers is.
    """
    if not (record["has_mask"] > 0 and record["mask"] and record["area_pixels"] > 0):
        return np.zeros((size, size, 1), np.uint8)
    mask = png_grey8(record["mask"])
    if mask is None:
        mask = _png(record["mask"], cv2.IMREAD_GRAYSCALE, "the mask")
    if mask.shape == (size, size):
        return (mask >= 128).astype(np.uint8)[..., None]
    unit = mask.astype(np.float32) * np.float32(1.0 / 255.0)
    return (resize_area(unit, size) >= 0.5).astype(np.uint8)[..., None]


def targets(record: Mapping[str, Any], size: int) -> dict[str, Any]:
    """The labels, flags, areas, spacing and id at size S, in `fusion.data._targets`' float32
    arithmetic (so the values are bit-identical)."""
    f32 = np.float32
    height, width = f32(record["height"]), f32(record["width"])
    has_area = f32(record["has_area"] > 0)
    has_spacing = f32(record["has_spacing"] > 0)
    has_mm2 = f32(record["has_area_mm2"] > 0)
    # Spacing scales with the resize: S pixels now cover what `height` pixels covered.
    scale = np.array([height / f32(size), width / f32(size)], f32)
    return {
        "labels": np.asarray(record["labels"], f32),
        "has_labels": f32(record["has_labels"] > 0),
        "has_mask": f32(record["has_mask"] > 0),
        "area_fraction": f32(has_area * f32(record["area_pixels"]) / max(height * width, f32(1.0))),
        "area_mm2": f32(record["area_mm2"]) * has_mm2,
        "has_area": has_area,
        "has_area_mm2": has_mm2,
        "pixel_spacing": np.asarray(record["pixel_spacing"], f32) * scale * has_spacing,
        "has_spacing": has_spacing,
        "id": record["id"],
    }


def decode_record(
    record: Mapping[str, Any],
    size: int,
    presets: Sequence[windows.Window] | None = None,
    codes_out: np.ndarray | None = None,
) -> dict[str, Any]:
    """One parsed record (`parse_example`) -> per-example arrays at S = size.

    Args:
      record: a parsed record.
      size: S, output height and width in pixels.
      presets: the shards' windows (`Manifest.presets`), for DICOM records.
      codes_out: [S, S, 4] uint8 to decode a render record's windows into (e.g. its row of a
        batch, so the batch needs no stacking copy); a new array when None.

    Returns:
      `targets` plus ``mask`` [S, S, 1] uint8 0/1 and either ``codes`` [S, S, 4] uint8 (the
      array `codes_out` when given) and ``table`` [4] int32 (render records; see
      `decode_window`) or ``image`` [S, S, 4] float32 in [0, 1] and ``hu`` [S, S, 1] float32
      HU (DICOM records).

    Raises:
      ReaderError: an image that does not decode (the message names the record).
    """
    try:
        out = targets(record, size)
        out["mask"] = mask_u8(record, size)
        if record["image/hu"]:
            stored = _png(record["image/hu"], cv2.IMREAD_UNCHANGED, "image/hu")
            hu = resize_bilinear(stored.astype(np.float32) - np.float32(schema.HU_OFFSET), size)
            image = windows.apply_windows(hu, presets)
            out.update(image=np.asarray(image, np.float32), hu=hu[..., None])
            return out
        ratio = jpeg_ratio(record["height"], record["width"], size)
        n = len(windows.WINDOW_NAMES)
        codes = np.empty((size, size, n), np.uint8) if codes_out is None else codes_out
        table = np.empty(n, np.int32)
        for j, name in enumerate(windows.WINDOW_NAMES):
            # Written straight into its channel: one strided copy, where np.stack costs two.
            codes[:, :, j], table[j] = decode_window(record[schema.image_key(name)], size, ratio)
        out["codes"], out["table"] = codes, table
        return out
    except ReaderError as err:
        raise ReaderError(f"record {record['id'].decode('utf-8', 'replace')}: {err}") from None


def _mask_batch(examples: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """[B, S, S, 1] float32 0/1 from the examples' uint8 masks, written once."""
    shape = examples[0]["mask"].shape if examples else (0, 0, 1)
    out = np.empty((len(examples), *shape), np.float32)
    for i, e in enumerate(examples):
        out[i] = e["mask"]
    return out


def collate(
    examples: Sequence[Mapping[str, Any]], codes: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per-example dicts -> the reader's batch dict (docs/design.md "Reader output").

    Render pixels stay uint8 until here and pass one table lookup; ``hu`` is present when any
    example is a DICOM one (zeros for render rows), as `fusion.data.preprocess` gives it.

    Args:
      examples: `decode_record` outputs.
      codes: [B, S, S, 4] uint8 whose rows are the render examples' ``codes`` (as `decode_record`
        wrote them with ``codes_out``), so they need no stacking; None to stack them.
    """
    out: dict[str, np.ndarray] = {}
    for key in ("labels", "has_labels", "has_mask", "area_fraction", "area_mm2", "has_area",
                "has_area_mm2", "pixel_spacing", "has_spacing"):
        out[key] = np.stack([np.asarray(e[key], np.float32) for e in examples])
    out["id"] = np.array([e["id"] for e in examples], dtype=object)
    out["mask"] = _mask_batch(examples)
    if all("codes" in e for e in examples):
        if codes is None:
            codes = np.stack([e["codes"] for e in examples])
        out["image"] = codes_to_grey(codes, np.stack([e["table"] for e in examples]))
        out["is_hu"] = np.zeros(len(examples), np.float32)
        return out
    images, hus = [], []
    for e in examples:
        if "codes" in e:
            images.append(codes_to_grey(e["codes"][None], e["table"][None])[0])
            hus.append(np.zeros(e["mask"].shape, np.float32))
        else:
            images.append(e["image"])
            hus.append(e["hu"])
    out.update(image=np.stack(images), hu=np.stack(hus),
               is_hu=np.array(["codes" not in e for e in examples], np.float32))
    return out


def model_io(
    batch: Mapping[str, np.ndarray], heads: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Reader dict -> (image, packed targets): `fusion.targets.pack_targets` on NumPy arrays.

    Returns:
      image [B, S, S, 4] float32; targets: class [B, 7], area [B, 2], mask [B, S, S, 2]
      float32 (only `heads`).
    """
    return pack_targets(batch, heads, xp=np)


# --- records of a split, and the Keras dataset ------------------------------------------------


class SplitRecords:
    """Random access to one split's serialised records, in manifest order (no decoding).

    The record index (shard, byte offset, length) comes from the shards' headers alone, so it
    costs one small read per record; file descriptors are opened per process, on first use.

    Raises:
      ManifestError, EmptySplitError, ValueError: as `shard_files`.
      CorruptRecordError: a shard whose headers are broken or that is cut short.
    """

    def __init__(self, shards_dir: str | os.PathLike[str], split: str) -> None:
        manifest = Manifest.load(shards_dir)
        self.files = shard_files(shards_dir, split, manifest)
        self.presets = list(manifest.presets)
        entries = [
            (k, offset, length) for k, path in enumerate(self.files) for offset, length in index_records(path)
        ]
        #: [N, 3] int64: shard number, byte offset, data length of each record.
        self.entries = np.array(entries, np.int64).reshape(-1, 3)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict[str, Any]:
        # Descriptors do not travel to spawned worker processes: each opens its own.
        return {**self.__dict__, "_fds": {}, "_pid": -1}

    def record(self, index: int) -> bytes:
        """The serialised record at `index` (both CRCs checked)."""
        shard, offset, length = (int(v) for v in self.entries[index])
        if self._pid != os.getpid():  # a forked worker: its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.files[shard], os.O_RDONLY)
        return read_record_at(self._fds[shard], self.files[shard], offset, length)

    def read_batch(self, indices: Sequence[int], size: int) -> dict[str, np.ndarray]:
        """The reader's batch dict of the records at `indices`, at S = size."""
        # Render windows are decoded straight into their row of the uint8 batch.
        codes = np.empty((len(indices), size, size, len(windows.WINDOW_NAMES)), np.uint8)
        examples = [decode_record(parse_example(self.record(i)), size, self.presets, codes_out=codes[k])
                    for k, i in enumerate(indices)]
        return collate(examples, codes=codes)


class ShardSequence(keras.utils.PyDataset):
    """One split of a `fusion-build` output as a `keras.utils.PyDataset`, for `model.fit` on
    any Keras backend.

    Pass ``shuffle=False`` to `model.fit`: this dataset shuffles itself, seeded, and Keras'
    own batch shuffle is not seeded.

    Args:
      shards_dir: a `fusion-build` output folder (with manifest.json).
      split: "train", "val" or "test".
      image_size: S, output height and width in pixels.
      batch_size: examples per batch.
      heads: the model's outputs, for the packed targets (`model_io`).
      shuffle: a new permutation of all records each epoch, from (seed, epoch).
      seed: shuffle seed.
      drop_remainder: drop the last, smaller batch.
      as_dicts: yield the reader's dicts instead of (image, targets).
      augment: training augmentation (`fusion.augment_numpy`), drawn from (seed, epoch, batch),
        its noise field from (seed, epoch); None for none.
      workers, use_multiprocessing, max_queue_size: as `keras.utils.PyDataset`.
      cache: a `fusion.decoded_cache.DecodedSplit` of this split at `image_size` to read the
        decoded records from instead of the shards (the same batches bit for bit); None to
        decode the shards.

    Raises:
      ValueError: a bad argument; the errors of `SplitRecords`.
    """

    def __init__(
        self,
        shards_dir: str | os.PathLike[str],
        split: str,
        image_size: int = 256,
        batch_size: int = 8,
        heads: Sequence[str] = HEADS,
        shuffle: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
        as_dicts: bool = False,
        augment: AugmentConfig | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache: Any = None,
    ) -> None:
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.records = SplitRecords(shards_dir, split)
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.heads, self.shuffle, self.seed = tuple(heads), bool(shuffle), int(seed)
        self.drop_remainder, self.as_dicts = bool(drop_remainder), bool(as_dicts)
        self.augment = augment
        self.cache = cache
        if cache is not None and (len(cache) != len(self.records) or cache.image_size != self.image_size):
            raise ValueError(f"the decoded cache holds {len(cache)} slices at {cache.image_size} px; this "
                             f"dataset reads {len(self.records)} at {self.image_size} px")
        self.epoch = 0
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        n = len(self.records)
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)

    def order(self) -> np.ndarray:
        """[N] record indices of the current epoch: manifest order, or a seeded permutation."""
        if self._order is None or self._order[0] != self.epoch:
            n = len(self.records)
            perm = (np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
                    else np.arange(n))
            self._order = (self.epoch, perm)
        return self._order[1]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        """The reader's dict of batch `index` of the current epoch (augmented if set)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        if self.cache is not None:  # the same records, decoded once (fusion.decoded_cache)
            batch = self.cache.read_batch(rows)
        else:
            batch = self.records.read_batch(rows.tolist(), self.image_size)
        if self.augment is not None and self.augment.enabled:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            batch = augment_batch(batch, self.augment, rng, self.records.presets,
                                  noise_key=(self.seed, self.epoch))
        return batch

    def __getitem__(self, index: int) -> Any:
        batch = self.batch(index)
        return batch if self.as_dicts else model_io(batch, self.heads)

    def on_epoch_end(self) -> None:
        self.epoch += 1
