"""Training-only, seeded augmentation applied alike to image and mask (TensorFlow ops, tf.data).

Works on the batched reader dict of `fusion.data` (docs/design.md "Reader output"); every slice
of a batch draws its own parameters:

1. window jitter (HU records only, ``is_hu`` = 1): each window's level moves by up to
   ``level_jitter_hu`` HU and its width by up to ``width_jitter`` (relative), and the image is
   re-windowed from ``hu`` with `data_build.windows.apply_windows` (the same function as the
   build, the reader and the exported model);
2. geometry: random flips, a rotation up to ``rotation_deg`` and a zoom up to ``scale``, one
   projective transform per slice applied to image (bilinear), mask (bilinear, then >= 0.5)
   and hu; ``area_fraction`` is rescaled by the mask's change in pixel count so it still
   matches the mask;
3. Gaussian noise on the image, clipped back to [0, 1].

Seeding: `augment_dataset` pairs every batch with a seed from
``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)``, so a run is reproducible,
each epoch sees new augmentations, and parallel mapping cannot reorder the random draws.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Sequence

import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from data_build import windows
from fusion.config import AugmentConfig

Batch = dict[str, tf.Tensor]
#: HU used outside the rotated/zoomed field of view: air.
_AIR_HU = -1024.0


def _presets_list(presets: Sequence[windows.Window] | None) -> list[tuple[float, float]]:
    """(level, width) per channel, `windows.WINDOW_NAMES` order (the standard presets if None)."""
    chosen = presets if presets is not None else [windows.PRESETS[n] for n in windows.WINDOW_NAMES]
    return [(float(w.level), float(w.width)) for w in chosen]


def _uniform(seed: tf.Tensor, shape: Any, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high, dtype=tf.float32)


def _jitter_windows(batch: Batch, cfg: AugmentConfig, presets: list[tuple[float, float]], seed: tf.Tensor) -> tf.Tensor:
    """Re-window HU records with jittered presets. Returns image [B, H, W, 4]."""
    image, hu = batch["image"], batch["hu"]
    b = tf.shape(image)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    n = len(presets)
    level_shift = _uniform(seeds[0], [b, n], -cfg.level_jitter_hu, cfg.level_jitter_hu)
    width_scale = _uniform(seeds[1], [b, n], 1.0 - cfg.width_jitter, 1.0 + cfg.width_jitter)
    # apply_windows reads only .level and .width; per-slice tensors [B, 1, 1] broadcast over H, W.
    jittered = [
        SimpleNamespace(
            level=level + level_shift[:, i, None, None],
            width=width * width_scale[:, i, None, None],
        )
        for i, (level, width) in enumerate(presets)
    ]
    rewindowed = windows.apply_windows(hu, presets=jittered, xp=tnp)  # [B, H, W, 4]
    rewindowed = tf.cast(rewindowed, image.dtype)
    is_hu = tf.reshape(tf.cast(batch["is_hu"], tf.float32) > 0.5, [-1, 1, 1, 1])
    return tf.where(is_hu, rewindowed, image)


def _transforms(cfg: AugmentConfig, b: tf.Tensor, height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Per-slice projective transforms [B, 8] mapping output pixels to input pixels."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    theta = _uniform(seeds[0], [b], -1.0, 1.0) * (cfg.rotation_deg * math.pi / 180.0)
    zoom = _uniform(seeds[1], [b], 1.0 - cfg.scale, 1.0 + cfg.scale)
    flips = _uniform(seeds[2], [b, 2], 0.0, 1.0) < 0.5
    fx = tf.where(flips[:, 0] & cfg.flip_left_right, -1.0, 1.0)
    fy = tf.where(flips[:, 1] & cfg.flip_up_down, -1.0, 1.0)
    cos, sin = tf.cos(theta) / zoom, tf.sin(theta) / zoom
    # input - c = diag(fx, fy) R(theta) / zoom (output - c), c the image centre.
    m00, m01 = fx * cos, -fx * sin
    m10, m11 = fy * sin, fy * cos
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    a2 = cx - m00 * cx - m01 * cy
    b2 = cy - m10 * cx - m11 * cy
    zeros = tf.zeros_like(theta)
    return tf.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)


def _warp(images: tf.Tensor, transforms: tf.Tensor, fill: float, interpolation: str = "BILINEAR") -> tf.Tensor:
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(fill, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )
    warped.set_shape(images.shape)  # keep static sizes for the model's graph
    return warped


def augment_batch(
    batch: Batch,
    seed: tf.Tensor,
    cfg: AugmentConfig,
    presets: Sequence[windows.Window] | None = None,
) -> Batch:
    """Augment one batched reader dict.

    Args:
      batch: reader dict: image [B, H, W, 4], hu [B, H, W, 1], is_hu [B], mask [B, H, W, 1],
        area_fraction [B], ... (other keys pass through).
      seed: int32/int64 [2] stateless seed.
      cfg: augmentation settings; ``cfg.enabled`` False returns `batch` unchanged.
      presets: the manifest's windows (`Manifest.presets`) for the window jitter.

    Returns:
      A dict with the same keys, shapes and dtypes.
    """
    if not cfg.enabled:
        return batch
    out = dict(batch)
    seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    image = out["image"]
    if "hu" in out and "is_hu" in out and (cfg.level_jitter_hu > 0 or cfg.width_jitter > 0):
        image = _jitter_windows(out, cfg, _presets_list(presets), seeds[0])
    shape = tf.shape(image)
    transforms = _transforms(cfg, shape[0], shape[1], shape[2], seeds[1])
    image = _warp(image, transforms, 0.0)
    if "mask" in out:
        mask = out["mask"]
        warped = tf.cast(_warp(tf.cast(mask, tf.float32), transforms, 0.0) >= 0.5, mask.dtype)
        if "area_fraction" in out:
            before = tf.reduce_sum(tf.cast(mask, tf.float32), axis=[1, 2, 3])
            after = tf.reduce_sum(tf.cast(warped, tf.float32), axis=[1, 2, 3])
            ratio = tf.where(before > 0, after / tf.maximum(before, 1.0), 1.0)
            out["area_fraction"] = out["area_fraction"] * tf.cast(ratio, out["area_fraction"].dtype)
        out["mask"] = warped
    if "hu" in out:
        out["hu"] = _warp(tf.cast(out["hu"], tf.float32), transforms, _AIR_HU)
    if cfg.noise_std > 0:
        noise = tf.random.stateless_normal(tf.shape(image), seed=seeds[2], stddev=cfg.noise_std)
        image = tf.clip_by_value(image + noise, 0.0, 1.0)
    out["image"] = tf.cast(image, batch["image"].dtype)
    return out


def augment_dataset(
    dataset: tf.data.Dataset,
    cfg: AugmentConfig,
    seed: int,
    presets: Sequence[windows.Window] | None = None,
) -> tf.data.Dataset:
    """Map `augment_batch` over a batched reader dataset, seeded, in parallel, in order."""
    if not cfg.enabled:
        return dataset
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    paired = tf.data.Dataset.zip((dataset, seeds))
    return paired.map(
        lambda batch, s: augment_batch(batch, s, cfg, presets),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
