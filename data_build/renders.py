"""The drop's render colour map, and its exact inverse.

The drop's window renders are not plain greys: each windowed grey went through matplotlib's
"bone" colour map (the "faint bluish tint": B > G > R by up to ~30 levels in the mid greys,
measured on the real renders in ../shared/data/real/xn-cases). Reading such a JPEG as luminance
gives greys ~10% darker than `windows.window(hu)`, so a model trained on renders would see other
values from raw DICOM (the exported `serve_hu` signature). We invert the map instead:
R + G + B rises strictly with the grey level (0..765), so a 766-entry table maps the channel sum
back to the grey in [0, 1]; JPEG noise moves the sum by a few levels, i.e. ~1/3 grey level.
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
