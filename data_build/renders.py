"""The drop's render colour map, and its exact inverse.

The drop's window renders are not plain greys: each windowed grey went through matplotlib's
"bone" colour map (the "faint bluish tint": B > G > R by up to ~30 levels in the mid greys,
measured on the real renders in ../shared/data/real/xn-cases). Reading such a JPEG as luminance
gives greys ~10% darker than `windows.window(hu)`, so a model trained on renders would see other
values from raw DICOM (the exported `serve_hu` signature). We invert the map instead, two ways:

- from the JPEG's luma (Y = 0.299 R + 0.587 G + 0.114 B, what libjpeg returns for a one-channel
  decode of a colour JPEG, without colour conversion): Y rises strictly with the grey level, so a
  256-entry table maps it back (at most 1.35 grey levels off before JPEG noise). This is the
  training reader's path: a one-channel decode is ~2x faster than a colour one.
- from R + G + B (0..765), which also rises strictly: exact, for RGB arrays already decoded.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# matplotlib's "bone" segment data (x, value) per channel; copied so we need no matplotlib.
_BONE_SEGMENTS = {
    "r": ((0.0, 0.0), (0.746032, 0.652778), (1.0, 1.0)),
    "g": ((0.0, 0.0), (0.365079, 0.319444), (0.746032, 0.777778), (1.0, 1.0)),
    "b": ((0.0, 0.0), (0.365079, 0.444444), (1.0, 1.0)),
}


def _bone_lut() -> np.ndarray:
    x = np.arange(256) / 255.0
    channels = []
    for key in "rgb":
        xs, ys = zip(*_BONE_SEGMENTS[key])
        channels.append(np.clip(np.rint(np.interp(x, xs, ys) * 255.0), 0, 255))
    return np.stack(channels, axis=-1).astype(np.uint8)


#: Grey level 0..255 -> RGB, [256, 3] uint8 (how the drop's renders were coloured).
BONE_LUT: np.ndarray = _bone_lut()

#: Channel sum R+G+B (0..765) -> grey in [0, 1], [766] float32: the inverse of `BONE_LUT`.
GREY_FROM_SUM: np.ndarray = np.interp(
    np.arange(766), BONE_LUT.astype(np.int64).sum(axis=1), np.arange(256) / 255.0
).astype(np.float32)


_LUMA_OF_GREY = BONE_LUT.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

#: JPEG luma Y (0..255) of a bone-mapped render -> grey in [0, 1], [256] float32.
GREY_FROM_LUMA: np.ndarray = np.interp(
    np.arange(256), _LUMA_OF_GREY, np.arange(256) / 255.0
).astype(np.float32)


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """uint8 grey [...] -> uint8 RGB [..., 3] through the bone colour map."""
    return BONE_LUT[np.asarray(grey, dtype=np.uint8)]


def rgb_to_grey(rgb: Any, xp: Any = np) -> Any:
    """RGB render pixels [..., 3] (uint8 values) -> grey [...] float32 in [0, 1].

    Exact inverse of `grey_to_rgb` up to JPEG noise. `xp` is numpy or a module with `sum`,
    `take` and `asarray` of the same meaning (e.g. ``tensorflow.experimental.numpy``).
    For a grey (R = G = B) image, this is close to (R+G+B)/765 but not equal: pass true greys
    through `windows` directly instead.
    """
    total = xp.sum(xp.asarray(rgb, dtype="int32"), axis=-1)
    return xp.take(xp.asarray(GREY_FROM_SUM), total)


def luma_to_grey(luma: Any, xp: Any = np) -> Any:
    """Luma of a bone-mapped render [...] (uint8 values) -> grey [...] float32 in [0, 1]."""
    return xp.take(xp.asarray(GREY_FROM_LUMA), xp.asarray(luma, dtype="int32"))
