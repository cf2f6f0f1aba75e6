"""Training-only augmentation in NumPy + OpenCV: the one augmentation, every Keras backend.

`fusion.reader.ShardSequence` applies it to training batches on TensorFlow, JAX and PyTorch
(the tf.data augmentation it replaced was removed in issue 11). Its steps, with the
`AugmentConfig` parameters, per slice of a batched reader dict:

0. bleed fading (``bleed_fade_prob`` > 0, `fusion.bleed_fade`): a traced bleed's density lowered
   towards the brain around it, for faint and iso-dense bleeds to learn from;
1. window jitter: each window's level moves by up to ``level_jitter_hu`` HU and its width by up
   to ``width_jitter`` (relative); HU records (``is_hu`` = 1) are re-windowed from ``hu`` with
   `data_build.windows.apply_windows`, render records only with ``jitter_renders`` (the grey
   unwindowed to HU and windowed again: exact inside the window, clipped pixels keep their grey,
   `windows.render_clipped`);
2. geometry: flips, a rotation up to ``rotation_deg`` and a zoom up to ``scale`` about the image
   centre, one affine map per slice applied to image (bilinear, 0 outside), mask (bilinear then
   >= 0.5) and hu (air, -1024 HU, outside); ``area_fraction`` is rescaled by the mask's change
   in pixel count;
3. Gaussian noise on the image, clipped back to [0, 1]: each slice's noise is a window of a
   field of i.i.d. normals twice its height and width (`noise_field`), at a random offset,
   flipped and negated at random. A window of i.i.d. normals is i.i.d. normal, so every slice
   gets the noise it got before; slices of one epoch share the field, shifted. Drawing one
   normal per pixel and window was 70 % of the augmentation's CPU at 512 px (docs/benchmarks.md).

The draws come from a NumPy generator the caller seeds (`fusion.reader.ShardSequence` seeds it
from (seed, epoch, batch), and the noise field from (seed, epoch)), so a run's augmentation is the
same whatever the backend and the number of workers.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import cv2
import numpy as np

from data_build import windows
from fusion.bleed_fade import fade_bleeds
from fusion.config import AugmentConfig

#: HU used outside the rotated/zoomed field of view: air.
_AIR_HU = -1024.0
#: Mixed into the noise field's seed so it is not the stream of the shuffle or the batch draws.
_NOISE_SALT = 0x6E6F6973


@functools.lru_cache(maxsize=1)  # the current epoch's field (16 MB at 512 px and 4 windows)
def noise_field(key: tuple[int, ...], height: int, width: int, channels: int) -> np.ndarray:
    """[2 H, 2 W, C] float32 standard normals drawn from `key` (read-only, cached)."""
    rng = np.random.default_rng([*key, _NOISE_SALT])
    field = rng.standard_normal((2 * height, 2 * width, channels), dtype=np.float32)
    field.flags.writeable = False
    return field


def _add_noise(image: np.ndarray, std: float, rng: np.random.Generator,
               key: Sequence[int] | None) -> np.ndarray:
    """clip(image + std x noise, 0, 1), each slice's noise a window of `noise_field`, in a new array."""
    b, h, w, c = image.shape
    if key is None:  # no caller's key: a field for this batch alone
        key = (int(rng.integers(2**62)),)
    field = noise_field(tuple(int(k) for k in key), h, w, c)
    top, left = rng.integers(0, h + 1, b), rng.integers(0, w + 1, b)
    flip_y, flip_x, sign = (rng.integers(0, 2, (3, b)) * 2 - 1)
    noisy = np.empty(image.shape, np.float32)
    for i in range(b):
        window = field[top[i]:top[i] + h, left[i]:left[i] + w][::flip_y[i], ::flip_x[i]]
        np.multiply(window, np.float32(std * sign[i]), out=noisy[i])
    noisy += image
    return np.clip(noisy, 0.0, 1.0, out=noisy)


def _jitter_draws(cfg: AugmentConfig, b: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[B, N] level shifts (HU) and width factors of the window jitter."""
    shift = rng.uniform(-cfg.level_jitter_hu, cfg.level_jitter_hu, (b, n))
    stretch = rng.uniform(1.0 - cfg.width_jitter, 1.0 + cfg.width_jitter, (b, n))
    return shift, stretch


def _jitter_renders(image: np.ndarray, cfg: AugmentConfig, presets: Sequence[windows.Window],
                    rng: np.random.Generator) -> np.ndarray:
    """The window jitter on rendered windows: each channel's grey back to HU with its preset
    (`windows.unwindow`) and through the jittered window again (`windows.window`). Exact where
    the render kept the pixel; where it clipped (`windows.render_clipped`: within 4 grey levels
    of 0 or 1, as JPEG ringing leaves a clipped pixel; the HU is unknown) the pixel keeps its
    grey. Returns a new [B, H, W, C] float32 image."""
    shift, stretch = _jitter_draws(cfg, image.shape[0], len(presets), rng)
    out = np.empty(image.shape, np.float32)
    for k, p in enumerate(presets):
        grey = image[..., k]
        level = (p.level + shift[:, k])[:, None, None]
        width = (p.width * stretch[:, k])[:, None, None]
        moved = windows.window(windows.unwindow(grey, p.level, p.width), level, width)
        out[..., k] = np.where(windows.render_clipped(grey), grey, moved)
    return out


def _jitter_windows(batch: dict[str, np.ndarray], cfg: AugmentConfig, presets: Sequence[windows.Window],
                    rng: np.random.Generator) -> np.ndarray:
    """Re-window the HU rows with jittered presets. Returns image [B, H, W, C] float32."""
    image = batch["image"].copy()
    b, n = image.shape[0], len(presets)
    shift, stretch = _jitter_draws(cfg, b, n, rng)
    for i in np.flatnonzero(batch["is_hu"] > 0.5):
        jittered = [windows.Window(p.level + shift[i, k], p.width * stretch[i, k])
                    for k, p in enumerate(presets)]
        image[i] = windows.apply_windows(batch["hu"][i], jittered).astype(np.float32)
    return image


def affine_maps(cfg: AugmentConfig, b: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[B, 2, 3] float64 maps from output to input pixel coordinates (as `fusion.augment`'s
    projective transforms): input - c = diag(fx, fy) R(theta) / zoom (output - c)."""
    theta = rng.uniform(-1.0, 1.0, b) * math.radians(cfg.rotation_deg)
    zoom = rng.uniform(1.0 - cfg.scale, 1.0 + cfg.scale, b)
    flips = rng.uniform(0.0, 1.0, (b, 2)) < 0.5
    fx = np.where(flips[:, 0] & cfg.flip_left_right, -1.0, 1.0)
    fy = np.where(flips[:, 1] & cfg.flip_up_down, -1.0, 1.0)
    cos, sin = np.cos(theta) / zoom, np.sin(theta) / zoom
    m = np.zeros((b, 2, 3))
    m[:, 0, 0], m[:, 0, 1] = fx * cos, -fx * sin
    m[:, 1, 0], m[:, 1, 1] = fy * sin, fy * cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    m[:, 0, 2] = cx - m[:, 0, 0] * cx - m[:, 0, 1] * cy
    m[:, 1, 2] = cy - m[:, 1, 0] * cx - m[:, 1, 1] * cy
    return m


def _warp(image: np.ndarray, m: np.ndarray, fill: float) -> np.ndarray:
    """[H, W, C] float32 through the output->input map `m`, bilinear, `fill` outside."""
    h, w = image.shape[:2]
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)
    return out.reshape(image.shape)  # OpenCV drops a trailing channel axis of 1


def _warp_batch(images: np.ndarray, maps: np.ndarray, fill: float) -> np.ndarray:
    """[B, H, W, C] float32, slice i through maps[i] (`_warp`), into one new batch (no stacking
    copy: 4 MB a slice at 512 px)."""
    out = np.empty(images.shape, np.float32)
    for i in range(images.shape[0]):
        out[i] = _warp(images[i], maps[i], fill)
    return out


def augment_batch(batch: dict[str, Any], cfg: AugmentConfig, rng: np.random.Generator,
                  presets: Sequence[windows.Window] | None = None,
                  noise_key: Sequence[int] | None = None) -> dict[str, Any]:
    """Augment one batched reader dict (`fusion.reader`), drawing from `rng`.

    Args:
      batch: image [B, H, W, 4] float32, mask [B, H, W, 1] float32 0/1, area_fraction [B],
        is_hu [B], and hu [B, H, W, 1] for DICOM shards; other keys pass through.
      cfg: the settings; ``cfg.enabled`` False returns `batch` unchanged.
      rng: the generator of this batch's draws.
      presets: the shards' windows (`Manifest.presets`), for the jitter and the bleed fading.
      noise_key: seeds the noise field the batches share (e.g. (seed, epoch)); None draws a
        field for this batch from `rng`.

    Returns:
      A dict with the same keys, shapes and dtypes.
    """
    if not cfg.enabled:
        return batch
    out = dict(batch)
    image = out["image"]
    presets = presets or [windows.PRESETS[n] for n in windows.WINDOW_NAMES]
    if cfg.bleed_fade_prob > 0:
        out = fade_bleeds(out, cfg.bleed_fade_prob, cfg.bleed_fade_min, rng, presets)
        image = out["image"]
    if cfg.level_jitter_hu > 0 or cfg.width_jitter > 0:
        if "hu" in out:
            image = _jitter_windows(out, cfg, presets, rng)
        elif cfg.jitter_renders:
            image = _jitter_renders(image, cfg, presets, rng)
    b, h, w = image.shape[:3]
    maps = affine_maps(cfg, b, h, w, rng)
    image = _warp_batch(image, maps, 0.0)
    mask = out["mask"]
    warped = (_warp_batch(mask, maps, 0.0) >= 0.5).astype(mask.dtype)
    before, after = mask.sum(axis=(1, 2, 3)), warped.sum(axis=(1, 2, 3))
    ratio = np.where(before > 0, after / np.maximum(before, 1.0), 1.0)
    out["area_fraction"] = (out["area_fraction"] * ratio).astype(out["area_fraction"].dtype)
    out["mask"] = warped
    if "hu" in out and b:
        out["hu"] = _warp_batch(out["hu"], maps, _AIR_HU)
    if cfg.noise_std > 0:
        image = _add_noise(image, cfg.noise_std, rng, noise_key)
    out["image"] = image.astype(np.float32, copy=False)
    return out
