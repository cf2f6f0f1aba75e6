"""Shards -> `tf.data.Dataset` of training-ready batches.

Three steps, as in TF Model Garden's parsers:

- `decode`: parse one serialised record with `schema.feature_spec` (no pixel work).
- `preprocess`: deterministic, shared by training, evaluation and serving checks. Render
  windows are decoded with libjpeg's reduced-scale DCT (`ratio` 2/4/8) whenever the target size allows, which is much
  faster than a full decode, as one channel (the JPEG's luma); the drop's bone colour map is
  inverted back to the windowed grey (`data_build.renders`); the image is resized to S x S
  when it is not that size already. DICOM records hold HU: they are resized,
  then windowed with `windows.apply_windows` and the manifest's presets. Masks are resized and
  thresholded at 0.5.
- `augment`: an optional callable on the per-example dict, before batching.

Training reads shards through `fusion.reader` on every backend (faster than this reader, less
CPU per slice: docs/benchmarks.md), with its one augmentation (`fusion.augment_numpy`); this
module is the tf.data form of the same decode for TensorFlow pipelines (serving checks, users'
own `tf.data` code) and shares the reader's colour-map tables.

`make_dataset` reads render shards on a faster path with the same output: `render_codes` keeps
each window's decoded luma as uint8 through batching and `grey_from_codes` inverts the colour
map once per batch (bit-identical to `preprocess` when S is the side / 1, 2, 4 or 8; within
0.5/255 otherwise). Render shards' batches carry no ``hu``.

The output dict is documented in docs/design.md, "Reader output".
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from data_build import renders, schema, windows

# One manifest for build, verify and training (schema-version check, resume hint).
from data_build.manifest import Manifest, ManifestError  # noqa: F401 (callers use data.ManifestError)

# The TensorFlow-free reader owns what both readers share (one copy of each).
from fusion.reader import SPLITS, EmptySplitError, shard_files  # noqa: F401
from fusion.reader import codes_to_grey as _codes_to_grey
from fusion.targets import pack_targets

#: Reduced-scale JPEG decode factors libjpeg supports (1 = full size).
_RATIOS: tuple[int, ...] = (1, 2, 4, 8)
_SHUFFLE_BUFFER = 1024


def decode(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parse one serialised record (scalar string) into its raw features (see `schema.FIELDS`)."""
    return tf.io.parse_single_example(serialized, schema.feature_spec())


def _jpeg_ratio_index(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
    """Index into `_RATIOS` of the largest reduction keeping both sides >= size."""
    smallest = tf.minimum(height, width)
    index = tf.constant(0, tf.int32)
    for i, ratio in enumerate(_RATIOS[1:], start=1):
        # libjpeg scales to ceil(side / ratio).
        fits = (smallest + ratio - 1) // ratio >= size
        index = tf.where(fits, tf.constant(i, tf.int32), index)
    return index


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """[h, w, c] float32 -> [size, size, c], antialiased when shrinking."""
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


def _render_image(features: Mapping[str, tf.Tensor], size: int) -> tf.Tensor:
    """Four window JPEGs -> [S, S, 4] float32 in [0, 1]."""
    index = _jpeg_ratio_index(features["height"], features["width"], size)
    channels = [
        decode_render(features[schema.image_key(name)], size, index) for name in windows.WINDOW_NAMES
    ]
    return tf.concat(channels, axis=-1)


def _decode_luma(data: tf.Tensor, ratio_index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """JPEG -> (uint8 luma [h, w, 1] at DCT scale 1 / `_RATIOS`[ratio_index], is it colour)."""
    branches = [
        (lambda r=r: tf.image.decode_jpeg(data, channels=1, ratio=r, dct_method="INTEGER_FAST"))
        for r in _RATIOS
    ]
    return tf.switch_case(ratio_index, branches), tf.image.extract_jpeg_shape(data)[2] == 3


def _grey(luma: tf.Tensor, is_colour: tf.Tensor) -> tf.Tensor:
    """Decoded luma [h, w, 1] -> grey float32 in [0, 1]: a colour JPEG is a bone-mapped render
    (its colour map inverted, `data_build.renders`), a greyscale one is taken as it is."""
    return tf.cond(
        is_colour,
        lambda: tf.expand_dims(renders.luma_to_grey(luma[..., 0], xp=tnp), -1),
        lambda: tf.cast(luma, tf.float32) / 255.0,
    )


def decode_render(data: tf.Tensor, size: int, ratio_index: tf.Tensor | None = None) -> tf.Tensor:
    """One window render JPEG -> [S, S, 1] grey in [0, 1], as `windows.window` gives it.

    The JPEG is decoded as one channel (its luma) at the largest reduced scale that keeps both
    sides >= S. A colour JPEG is taken to be a bone-mapped render (the drop's format) and its
    colour map is inverted (`data_build.renders`); a greyscale JPEG is taken as it is. The
    image is resized only when the decoded size is not S already.
    """
    if ratio_index is None:
        shape = tf.image.extract_jpeg_shape(data)
        ratio_index = _jpeg_ratio_index(shape[0], shape[1], size)
    grey = _grey(*_decode_luma(data, ratio_index))
    same = tf.reduce_all(tf.shape(grey)[:2] == size)
    grey = tf.cond(same, lambda: grey, lambda: _resize(grey, size))
    grey.set_shape([size, size, 1])
    return grey


def _hu(features: Mapping[str, tf.Tensor], size: int) -> tf.Tensor:
    """HU PNG -> [S, S, 1] float32 HU."""
    stored = tf.io.decode_png(features["image/hu"], channels=1, dtype=tf.uint16)
    hu = tf.cast(stored, tf.float32) - float(schema.HU_OFFSET)
    return _resize(hu, size)


def _mask_u8(features: Mapping[str, tf.Tensor], size: int) -> tf.Tensor:
    """Mask PNG -> [S, S, 1] uint8 0/1; zeros when unknown or known empty (no decode)."""

    def decoded() -> tf.Tensor:
        mask = tf.io.decode_png(features["mask"], channels=1)
        same = tf.reduce_all(tf.shape(mask)[:2] == size)
        # Area averaging then >= 0.5: a pixel is bleed when most of what it covers is.
        return tf.cond(
            same,
            lambda: tf.cast(mask >= 128, tf.uint8),
            lambda: tf.cast(
                tf.image.resize(tf.cast(mask, tf.float32) / 255.0, [size, size], "area") >= 0.5,
                tf.uint8,
            ),
        )

    has = tf.logical_and(features["has_mask"] > 0, tf.strings.length(features["mask"]) > 0)
    nonempty = tf.logical_and(has, features["area_pixels"] > 0)
    mask = tf.cond(nonempty, decoded, lambda: tf.zeros([size, size, 1], tf.uint8))
    mask.set_shape([size, size, 1])
    return mask


def _mask(features: Mapping[str, tf.Tensor], size: int) -> tf.Tensor:
    """Mask PNG -> [S, S, 1] float32 0/1; zeros when unknown or known empty (no decode)."""
    return tf.cast(_mask_u8(features, size), tf.float32)


def _targets(features: Mapping[str, tf.Tensor], size: int) -> dict[str, tf.Tensor]:
    """The per-example labels, flags, areas, spacing and id at size S (no pixels)."""
    height = tf.cast(features["height"], tf.float32)
    width = tf.cast(features["width"], tf.float32)
    has_area = tf.cast(features["has_area"] > 0, tf.float32)
    has_spacing = tf.cast(features["has_spacing"] > 0, tf.float32)
    # Spacing scales with the resize: S pixels now cover what `height` pixels covered.
    scale = tf.stack([height / float(size), width / float(size)])
    return {
        "labels": tf.cast(features["labels"], tf.float32),
        "has_labels": tf.cast(features["has_labels"] > 0, tf.float32),
        "has_mask": tf.cast(features["has_mask"] > 0, tf.float32),
        "area_fraction": has_area * features["area_pixels"] / tf.maximum(height * width, 1.0),
        "area_mm2": features["area_mm2"] * tf.cast(features["has_area_mm2"] > 0, tf.float32),
        "has_area": has_area,
        "has_area_mm2": tf.cast(features["has_area_mm2"] > 0, tf.float32),
        "pixel_spacing": features["pixel_spacing"] * scale * has_spacing,
        "has_spacing": has_spacing,
        "id": features["id"],
    }


# --- the fast path for render shards: uint8 through batching, one table lookup per batch ------

def render_codes(features: Mapping[str, tf.Tensor], size: int) -> dict[str, tf.Tensor]:
    """One render record -> compact per-example tensors, batched before any float work.

    Returns:
      `_targets` plus ``codes`` [S, S, 4] uint8, ``table`` [4] int32 and ``mask`` [S, S, 1]
      uint8 0/1; `grey_from_codes` turns a batch of them into the reader's float tensors. A
      window decoded straight to S x S (the usual case: S = side / 1, 2, 4 or 8) keeps its
      JPEG luma as codes with table 0 (invert the bone colour map) or, for a greyscale JPEG,
      table 1 (value / 255). Otherwise its grey is resized to S and stored rounded to 1/255,
      table 1 (within 0.5/255 of `preprocess`).
    """
    index = _jpeg_ratio_index(features["height"], features["width"], size)
    codes, tables = [], []
    for name in windows.WINDOW_NAMES:
        data = features[schema.image_key(name)]
        luma, is_colour = _decode_luma(data, index)

        def exact(luma=luma, is_colour=is_colour) -> tuple[tf.Tensor, tf.Tensor]:
            return luma, tf.where(is_colour, 0, 1)

        def resized(luma=luma, is_colour=is_colour) -> tuple[tf.Tensor, tf.Tensor]:
            grey = tf.round(_resize(_grey(luma, is_colour), size) * 255.0)
            return tf.cast(tf.clip_by_value(grey, 0.0, 255.0), tf.uint8), tf.constant(1)

        same = tf.reduce_all(tf.shape(luma)[:2] == size)
        code, table = tf.cond(same, exact, resized)
        code.set_shape([size, size, 1])
        codes.append(code)
        tables.append(table)
    out = _targets(features, size)
    out["codes"] = tf.concat(codes, axis=-1)
    out["table"] = tf.stack(tables)
    out["mask"] = _mask_u8(features, size)
    return out


def grey_from_codes(batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """A batch of `render_codes` -> the reader's dict: image and mask float32, is_hu 0.

    The table lookup runs once per batch, through OpenCV: TensorFlow's gather costs ~3x more,
    and floats before batching make every later copy 4x bigger (docs/benchmarks.md, "Reads").
    """
    out = {k: v for k, v in batch.items() if k not in ("codes", "table")}
    codes = batch["codes"]
    image = tf.numpy_function(_codes_to_grey, [codes, batch["table"]], tf.float32, stateful=False)
    out["image"] = tf.ensure_shape(image, codes.shape)
    out["mask"] = tf.cast(batch["mask"], tf.float32)
    out["is_hu"] = tf.zeros_like(out["has_labels"])
    return out


def preprocess(
    features: Mapping[str, tf.Tensor],
    image_size: int,
    presets: list[windows.Window] | None = None,
) -> dict[str, tf.Tensor]:
    """Decoded features -> the reader's per-example dict at S = image_size (deterministic).

    Args:
      features: output of `decode`.
      image_size: S, output height and width in pixels (any positive int).
      presets: windows for HU records, `WINDOW_NAMES` order; default `windows.PRESETS`.

    Returns:
      image [S, S, 4] float32 in [0, 1]; hu [S, S, 1] float32 HU (zeros for renders); is_hu,
      has_labels, has_mask, area_fraction, area_mm2, has_area, has_area_mm2, has_spacing []
      float32; labels [6] float32; mask [S, S, 1] float32 0/1; pixel_spacing [2] float32 mm per
      pixel at size S; id [] string.
    """
    size = int(image_size)
    if presets is None:
        presets = [windows.PRESETS[n] for n in windows.WINDOW_NAMES]
    is_hu = tf.strings.length(features["image/hu"]) > 0

    def from_hu() -> tuple[tf.Tensor, tf.Tensor]:
        hu = _hu(features, size)
        image = windows.apply_windows(hu, presets, xp=tnp)
        return tf.cast(image, tf.float32), hu

    def from_render() -> tuple[tf.Tensor, tf.Tensor]:
        return _render_image(features, size), tf.zeros([size, size, 1], tf.float32)

    image, hu = tf.cond(is_hu, from_hu, from_render)
    image.set_shape([size, size, len(windows.WINDOW_NAMES)])
    hu.set_shape([size, size, 1])

    out = _targets(features, size)
    out.update(image=image, hu=hu, is_hu=tf.cast(is_hu, tf.float32), mask=_mask(features, size))
    return out


def make_dataset(
    shards_dir: str | os.PathLike[str],
    split: str,
    image_size: int = 256,
    batch_size: int = 8,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    augment: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of one split, ready for training or evaluation.

    Args:
      shards_dir: a `fusion-build` output folder (with manifest.json).
      split: "train", "val" or "test".
      image_size: S, output height and width (any positive int).
      batch_size: examples per batch (> 0).
      shuffle: shuffle shard order and records (seeded; otherwise manifest order).
      seed: shuffle seed.
      repeat: repeat forever (for `fit` with steps_per_epoch).
      augment: per-example dict -> dict, applied after `preprocess`, before batching (this
        takes render shards off the uint8 fast path).
      drop_remainder: drop the last, smaller batch.

    Returns:
      Dataset of dicts as in docs/design.md "Reader output" (leading batch dim B). Render
      shards read without ``augment`` carry no ``hu`` key.

    Raises:
      ManifestError, EmptySplitError, ValueError (bad arguments).
    """
    if int(image_size) <= 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    manifest = Manifest.load(shards_dir)
    files = shard_files(shards_dir, split, manifest)
    presets = list(manifest.presets)
    autotune = tf.data.AUTOTUNE

    if shuffle:
        # Shard order, then records from several shards at once, then a record buffer.
        dataset = tf.data.Dataset.from_tensor_slices(files)
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 8),
            num_parallel_calls=autotune,
            deterministic=True,
        )
        dataset = dataset.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    else:
        # Manifest order (split sorted by id), so evaluation output lines up with the manifest;
        # reading is cheap next to decoding, which stays parallel below.
        dataset = tf.data.TFRecordDataset(files)
    if repeat:
        dataset = dataset.repeat()
    size = int(image_size)
    if manifest.source == "render" and augment is None:
        # Fast path: pixels stay uint8 until after batching (see `grey_from_codes`).
        dataset = dataset.map(
            lambda s: render_codes(decode(s), size), num_parallel_calls=autotune, deterministic=True
        )
        dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
        dataset = dataset.map(grey_from_codes, num_parallel_calls=autotune, deterministic=True)
        return dataset.prefetch(autotune)
    dataset = dataset.map(
        lambda s: preprocess(decode(s), size, presets),
        num_parallel_calls=autotune,
        deterministic=True,
    )
    if augment is not None:
        dataset = dataset.map(augment, num_parallel_calls=autotune, deterministic=True)
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    return dataset.prefetch(autotune)


def to_model_io(batch: Mapping[str, tf.Tensor], heads: Sequence[str]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Reader dict -> (image, packed targets), `fusion.targets.pack_targets` on tf tensors.

    Returns:
      image [B, S, S, 4]; targets: class [B, 7], area [B, 2], mask [B, S, S, 2] (only `heads`).
    """
    return pack_targets(batch, heads, xp=tnp)
