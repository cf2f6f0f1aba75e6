"""The targets' conventions, in one place: area transform, mask threshold, mm², y_true packing.

Training, the losses, the export, evaluation and prediction all call these; none re-inlines a
formula. Every function takes the array module as ``xp`` (NumPy by default; ``keras.ops`` in
model code, ``tensorflow.experimental.numpy`` in the tf.data path), like `windows.window`, so
this module imports neither Keras nor TensorFlow.

Area: the bleed area fraction (bleed pixels / all pixels) is heavily skewed (most slices 0,
bleeds 0.1-5 %, a few much larger), so the area head regresses ``log1p(fraction * 1e3)``
(0 -> 0, 0.1 % -> 0.69, 1 % -> 2.4, 10 % -> 4.6). ``area_mm2 = fraction x H x W x
row_spacing x col_spacing`` with the spacing in mm per pixel at size H x W.

Packing (`pack_targets`): each target's presence flag rides in ``y_true`` as its last channel,
so the masked losses (`fusion.losses`) learn only from slices whose target is known:

| output | y_true | last channel |
|---|---|---|
| class | [B, 7] = labels [B, 6] + has_labels | 1: labels known |
| area  | [B, 2] = area target + has_area | 1: area known (mask known) |
| mask  | [B, H, W, 2] = mask + has_mask broadcast | 1: mask known (normal: known empty) |
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fusion.config import AUX_MASK

#: The area head regresses log1p(fraction * AREA_SCALE).
AREA_SCALE = 1e3
#: Probability at which a mask pixel counts as bleed where a run calibrated none (runs calibrate
#: their own on validation: ``thresholds.json``'s ``mask_threshold``, `fusion.thresholds`).
MASK_THRESHOLD = 0.5


def area_to_target(fraction: Any, xp: Any = np) -> Any:
    """Area fraction in [0, 1] -> regression target ``log1p(fraction * 1e3)``."""
    return xp.log1p(fraction * AREA_SCALE)


def target_to_area(target: Any, xp: Any = np) -> Any:
    """Inverse of `area_to_target`, clipped to [0, 1] (a fraction cannot leave that range)."""
    return xp.clip(xp.expm1(target) / AREA_SCALE, 0.0, 1.0)


def mm2_per_fraction(height: Any, width: Any, spacing: Any) -> Any:
    """mm² covered by a whole image: H x W x row spacing x column spacing.

    Args:
      height, width: image size in pixels.
      spacing: [..., 2] (row, column) mm per pixel AT that size.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    return height * width * spacing[..., 0] * spacing[..., 1]


def binary_mask(probabilities: Any, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """Mask probabilities -> bool bleed mask (NaN, "not predicted", counts as no bleed)."""
    return np.nan_to_num(np.asarray(probabilities), nan=0.0) >= threshold


def pack_targets(batch: Mapping[str, Any], heads: Sequence[str], xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """Reader dict -> (image, packed targets) in the layout above, for the heads in `heads`.

    Args:
      batch: reader batch (docs/design.md "Reader output"): image [B, S, S, 4], labels [B, 6],
        has_labels [B], area_fraction [B], has_area [B], mask [B, S, S, 1], has_mask [B].
      heads: output names of the model ("class", "area", "mask"; ``AUX_MASK`` with deep
        supervision, which needs "mask" too and gets the same target).
      xp: array module.

    Returns:
      image [B, S, S, 4]; {"class": [B, 7], "area": [B, 2], "mask": [B, S, S, 2]} (only `heads`).
    """
    def f32(x: Any) -> Any:
        return xp.asarray(x, dtype="float32")

    y: dict[str, Any] = {}
    if "class" in heads:
        y["class"] = xp.concatenate([f32(batch["labels"]), f32(batch["has_labels"])[:, None]], -1)
    if "area" in heads:
        y["area"] = xp.stack([area_to_target(f32(batch["area_fraction"]), xp), f32(batch["has_area"])], -1)
    if "mask" in heads:
        mask = f32(batch["mask"])
        known = f32(batch["has_mask"])[:, None, None, None] * xp.ones_like(mask)
        y["mask"] = xp.concatenate([mask, known], -1)
    if AUX_MASK in heads:  # deep supervision: its maps are upsampled, so the same target
        y[AUX_MASK] = y["mask"]
    return batch["image"], y
