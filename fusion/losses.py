"""Masked multi-task losses (plain Keras 3: keras.ops only).

Partial labels are handled by packing each target's presence flag into ``y_true`` as its last
channel (`fusion.targets.pack_targets`, which documents the layout), so every loss knows which
slices it may learn from and averages over those only. A slice whose flag is 0 adds exactly
nothing to its loss (it is neither in the numerator nor in the denominator); a batch with no
flagged slice gives a loss of 0.

The area head is regressed with a Huber loss in the transformed space of
`fusion.targets.area_to_target` (``log1p(fraction * 1e3)``).
"""
from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from fusion.config import AUX_MASK, LossConfig

_EPS = 1e-7


def _masked_mean(values: Any, flags: Any) -> Any:
    """sum(values * flags) / max(sum(flags), 1): the mean over flagged entries, 0 if none."""
    return ops.sum(values * flags) / ops.maximum(ops.sum(flags), 1.0)


@keras.saving.register_keras_serializable(package="fusion")
class MaskedClassLoss(keras.losses.Loss):
    """Binary focal or weighted cross-entropy over the 6 labels, on slices with labels.

    y_true [B, 7] (labels + has_labels), y_pred [B, 6] probabilities.
    """

    def __init__(
        self,
        kind: str = "focal",
        gamma: float = 2.0,
        alpha: float = 0.5,
        pos_weight: Sequence[float] = (1.0,),
        name: str = "class_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, reduction="sum", **kwargs)
        if kind not in ("focal", "bce"):
            raise ValueError(f"kind must be 'focal' or 'bce', got {kind!r}")
        self.kind = kind
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.pos_weight = tuple(float(v) for v in pos_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        labels, known = y_true[:, :-1], y_true[:, -1]  # [B, 6], [B]
        pos_weight = ops.convert_to_tensor(self.pos_weight, dtype="float32")
        pos = -labels * ops.log(y_pred) * pos_weight
        neg = -(1.0 - labels) * ops.log(1.0 - y_pred)
        if self.kind == "focal":
            # Focal: down-weight easy examples; alpha balances positives and negatives
            # (alpha = 0.5 keeps them equal, the factor 2 keeps the scale of BCE).
            p_t = labels * y_pred + (1.0 - labels) * (1.0 - y_pred)
            modulator = ops.power(1.0 - p_t, self.gamma)
            pos = pos * modulator * (2.0 * self.alpha)
            neg = neg * modulator * (2.0 * (1.0 - self.alpha))
        per_slice = ops.mean(pos + neg, axis=-1)  # [B]
        return _masked_mean(per_slice, known)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "gamma": self.gamma, "alpha": self.alpha,
                "pos_weight": list(self.pos_weight)}


@keras.saving.register_keras_serializable(package="fusion")
class MaskedAreaLoss(keras.losses.Loss):
    """Huber loss in the transformed area space on slices with a known area.

    y_true [B, 2] (area target + has_area), y_pred [B, 1].
    """

    def __init__(self, delta: float = 1.0, name: str = "area_loss", **kwargs: Any) -> None:
        super().__init__(name=name, reduction="sum", **kwargs)
        self.delta = float(delta)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, "float32")
        target, known = y_true[:, 0], y_true[:, 1]  # [B], [B]
        error = ops.abs(ops.cast(y_pred, "float32")[:, 0] - target)  # [B]
        quadratic = ops.minimum(error, self.delta)
        huber = 0.5 * quadratic**2 + self.delta * (error - quadratic)
        return _masked_mean(huber, known)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "delta": self.delta}


@keras.saving.register_keras_serializable(package="fusion")
class MaskedMaskLoss(keras.losses.Loss):
    """Weighted BCE + soft Dice per slice + soft Dice over the batch, on known masks.

    y_true [B, H, W, 2] (mask 0/1 + has_mask broadcast), y_pred [B, H, W, 1] probabilities.

    - BCE: positive (bleed) pixels weighted by `pos_weight`; mean per slice, then over slices.
    - Slice Dice: ``1 - (2 sum(p y) + s) / (sum p + sum y + s)`` per slice (s = `smooth`), mean
      over known slices. On a known-empty slice it is ~ sum(p), pushing false positives down.
    - Batch Dice: one Dice over all the batch's known masks together: a model predicting
      all-background scores 0 there whatever the mix of empty and bleeding slices, so it
      cannot settle into that collapse.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        batch_dice_weight: float = 0.5,
        pos_weight: float = 5.0,
        smooth: float = 1.0,
        name: str = "mask_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, reduction="sum", **kwargs)
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.batch_dice_weight = float(batch_dice_weight)
        self.pos_weight = float(pos_weight)
        self.smooth = float(smooth)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, "float32")
        truth = y_true[..., 0]  # [B, H, W]
        known = y_true[:, 0, 0, 1]  # [B]
        prob = ops.clip(ops.cast(y_pred, "float32")[..., 0], _EPS, 1.0 - _EPS)  # [B, H, W]
        bce = -(self.pos_weight * truth * ops.log(prob) + (1.0 - truth) * ops.log(1.0 - prob))
        bce = ops.mean(bce, axis=(1, 2))  # [B]
        inter = ops.sum(prob * truth, axis=(1, 2))  # [B]
        total = ops.sum(prob, axis=(1, 2)) + ops.sum(truth, axis=(1, 2))  # [B]
        slice_dice = (2.0 * inter + self.smooth) / (total + self.smooth)  # [B]
        batch_dice = (2.0 * ops.sum(inter * known) + self.smooth) / (
            ops.sum(total * known) + self.smooth
        )
        any_known = ops.minimum(ops.sum(known), 1.0)  # 0 when no slice has a mask: loss 0
        return (
            self.bce_weight * _masked_mean(bce, known)
            + self.dice_weight * _masked_mean(1.0 - slice_dice, known)
            + self.batch_dice_weight * (1.0 - batch_dice) * any_known
        )

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "bce_weight": self.bce_weight, "dice_weight": self.dice_weight,
                "batch_dice_weight": self.batch_dice_weight, "pos_weight": self.pos_weight,
                "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="fusion")
class DeepSupervisionLoss(MaskedMaskLoss):
    """The mask loss on each deep-supervision map, weighted 1/2, 1/4, ... (stride 2 first).

    y_true [B, H, W, 2] (the mask target, as `MaskedMaskLoss`), y_pred [B, H, W, K]: the K
    auxiliary maps (`fusion.model.build_aux_masks`). The weights halve with each coarser level,
    as nnU-Net's deep supervision: the full-resolution head (weight 1) stays the one that counts.
    """

    def __init__(self, *args: Any, name: str = "mask_aux_loss", **kwargs: Any) -> None:
        super().__init__(*args, name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        total = 0.0
        for k in range(y_pred.shape[-1]):  # K is static: one term per level
            total = total + 0.5 ** (k + 1) * super().call(y_true, y_pred[..., k : k + 1])
        return total


def build_losses(cfg: LossConfig, heads: Sequence[str]) -> tuple[dict[str, keras.losses.Loss], dict[str, float]]:
    """Losses and loss weights keyed by output name, for `model.compile`.

    Args:
      cfg: the loss section of the run config.
      heads: the model's output names (``AUX_MASK`` with deep supervision).

    Returns:
      (losses, loss_weights), both keyed by the names in `heads`.
    """
    losses: dict[str, keras.losses.Loss] = {}
    weights: dict[str, float] = {}
    if "class" in heads:
        pos_weight = cfg.class_pos_weight * (6 if len(cfg.class_pos_weight) == 1 else 1)
        losses["class"] = MaskedClassLoss(cfg.class_loss, cfg.focal_gamma, cfg.focal_alpha, pos_weight)
        weights["class"] = cfg.class_weight
    if "area" in heads:
        losses["area"] = MaskedAreaLoss(cfg.area_delta)
        weights["area"] = cfg.area_weight
    mask_terms = (cfg.mask_bce_weight, cfg.mask_dice_weight, cfg.mask_batch_dice_weight, cfg.mask_pos_weight)
    if "mask" in heads:
        losses["mask"] = MaskedMaskLoss(*mask_terms)
        weights["mask"] = cfg.mask_weight
    if AUX_MASK in heads:
        losses[AUX_MASK] = DeepSupervisionLoss(*mask_terms)
        weights[AUX_MASK] = cfg.mask_weight
    return losses, weights
