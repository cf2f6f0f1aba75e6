"""Masked multi-task losses: unknown targets add nothing, known-empty masks count."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fusion.config import AUX_MASK, LossConfig
from fusion.losses import (
    DeepSupervisionLoss,
    MaskedAreaLoss,
    MaskedClassLoss,
    MaskedMaskLoss,
    build_losses,
)
from fusion.targets import area_to_target, target_to_area

RNG = np.random.default_rng(0)
S = 16


def f(x: object) -> float:
    return float(np.asarray(x))


def pack_mask(mask: np.ndarray, known: np.ndarray) -> np.ndarray:
    """[B, H, W, 1] mask + [B] flags -> [B, H, W, 2] (the layout of fusion.losses)."""
    flags = np.broadcast_to(known[:, None, None, None], mask.shape).astype(np.float32)
    return np.concatenate([mask, flags], axis=-1).astype(np.float32)


def square_mask(b: int) -> np.ndarray:
    mask = np.zeros((b, S, S, 1), np.float32)
    mask[:, 4:9, 5:11] = 1.0
    return mask


def test_slice_without_mask_adds_exactly_nothing() -> None:
    loss = MaskedMaskLoss()
    mask = square_mask(3)
    mask[2] = 0.0  # a normal slice: known empty
    pred = RNG.random((3, S, S, 1)).astype(np.float32)
    base = f(loss(pack_mask(mask, np.array([1, 1, 1.0])), pred))
    # Append a slice with an unknown mask, arbitrary "truth" and prediction.
    extra_mask = np.concatenate([mask, RNG.integers(0, 2, (1, S, S, 1)).astype(np.float32)])
    extra_pred = np.concatenate([pred, RNG.random((1, S, S, 1)).astype(np.float32)])
    with_unknown = f(loss(pack_mask(extra_mask, np.array([1, 1, 1, 0.0])), extra_pred))
    assert with_unknown == pytest.approx(base, rel=1e-6, abs=1e-7)


def test_known_empty_mask_does_count() -> None:
    loss = MaskedMaskLoss()
    mask = np.zeros((1, S, S, 1), np.float32)  # a normal slice
    y = pack_mask(mask, np.array([1.0]))
    quiet = f(loss(y, np.full((1, S, S, 1), 0.01, np.float32)))
    noisy = f(loss(y, np.full((1, S, S, 1), 0.6, np.float32)))
    assert noisy > quiet + 0.5
    # The same predictions with the mask unknown give no loss at all.
    assert f(loss(pack_mask(mask, np.array([0.0])), np.full((1, S, S, 1), 0.6, np.float32))) == 0.0


def test_batch_without_known_masks_has_zero_loss() -> None:
    loss = MaskedMaskLoss()
    y = pack_mask(square_mask(2), np.zeros(2))
    assert f(loss(y, RNG.random((2, S, S, 1)).astype(np.float32))) == 0.0


def test_all_background_prediction_is_penalised_more_than_the_truth() -> None:
    loss = MaskedMaskLoss(bce_weight=0.0, dice_weight=0.0, batch_dice_weight=1.0)
    mask = square_mask(2)
    y = pack_mask(mask, np.ones(2))
    collapsed = f(loss(y, np.full_like(mask, 1e-4)))
    perfect = f(loss(y, np.clip(mask, 1e-4, 1 - 1e-4)))
    assert collapsed > 0.95  # batch Dice of an empty prediction is ~0
    assert perfect < 0.05


def test_mask_loss_matches_a_hand_computation() -> None:
    loss = MaskedMaskLoss(bce_weight=1.0, dice_weight=1.0, batch_dice_weight=0.0, pos_weight=2.0, smooth=1.0)
    mask = square_mask(1)
    pred = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    bce = -(2.0 * mask * np.log(pred) + (1 - mask) * np.log(1 - pred)).mean()
    dice = (2 * (pred * mask).sum() + 1) / (pred.sum() + mask.sum() + 1)
    assert f(loss(pack_mask(mask, np.ones(1)), pred)) == pytest.approx(bce + 1 - dice, rel=1e-5)


def test_class_loss_ignores_unlabelled_slices() -> None:
    loss = MaskedClassLoss(kind="bce")
    labels = np.array([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32)
    pred = np.array([[0.9, 0.2, 0.7, 0.1, 0.1, 0.3], [0.2, 0.1, 0.1, 0.1, 0.1, 0.1]], np.float32)
    y = np.concatenate([labels, np.ones((2, 1), np.float32)], axis=1)
    base = f(loss(y, pred))
    expected = -(labels * np.log(pred) + (1 - labels) * np.log(1 - pred)).mean()
    assert base == pytest.approx(expected, rel=1e-5)
    y_extra = np.concatenate([y, [[1, 1, 1, 1, 1, 1, 0]]]).astype(np.float32)
    pred_extra = np.concatenate([pred, np.full((1, 6), 0.01, np.float32)])
    assert f(loss(y_extra, pred_extra)) == pytest.approx(base, rel=1e-6)


def test_positive_weight_and_focal_modulation() -> None:
    y = np.array([[1, 0, 0, 0, 0, 0, 1]], np.float32)
    pred = np.full((1, 6), 0.3, np.float32)
    plain = f(MaskedClassLoss(kind="bce")(y, pred))
    weighted = f(MaskedClassLoss(kind="bce", pos_weight=(4.0,) * 6)(y, pred))
    assert weighted == pytest.approx(plain + 3 * -math.log(0.3) / 6, rel=1e-5)
    confident = np.array([[0.95, 0.05, 0.05, 0.05, 0.05, 0.05]], np.float32)
    focal = f(MaskedClassLoss(kind="focal", gamma=2.0)(y, confident))
    bce = f(MaskedClassLoss(kind="bce")(y, confident))
    assert 0 < focal < bce / 100  # easy examples are down-weighted by (1 - p_t)^2 = 0.0025


def test_area_loss_and_transform() -> None:
    fractions = np.array([0.0, 0.001, 0.01, 0.1], np.float32)
    targets = np.asarray(area_to_target(fractions))
    np.testing.assert_allclose(targets, np.log1p(fractions * 1e3), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(target_to_area(targets)), fractions, rtol=1e-5, atol=1e-8)
    assert area_to_target(0.01) == pytest.approx(math.log1p(10.0))  # plain floats too
    loss = MaskedAreaLoss(delta=1.0)
    y = np.stack([targets, np.array([1, 1, 0, 1], np.float32)], axis=1)
    pred = (targets + np.array([0.5, -0.5, 9.0, 3.0], np.float32))[:, None]
    # Known slices: errors 0.5, 0.5, 3 -> Huber 0.125, 0.125, 2.5; the unknown one is ignored.
    assert f(loss(y, pred)) == pytest.approx((0.125 + 0.125 + 2.5) / 3, rel=1e-5)


def test_build_losses_follows_heads_and_weights() -> None:
    cfg = LossConfig(class_weight=2.0, area_weight=0.25, mask_weight=1.5)
    losses, weights = build_losses(cfg, ["class", "area", "mask"])
    assert set(losses) == {"class", "area", "mask"}
    assert weights == {"class": 2.0, "area": 0.25, "mask": 1.5}
    only, _ = build_losses(cfg, ["class"])
    assert set(only) == {"class"}
    assert MaskedMaskLoss.from_config(losses["mask"].get_config()).pos_weight == cfg.mask_pos_weight


def test_deep_supervision_loss_halves_its_weight_per_level() -> None:
    mask = square_mask(3)
    y = pack_mask(mask, np.array([1.0, 0.0, 1.0], np.float32))
    coarse = [RNG.uniform(0.05, 0.95, mask.shape).astype(np.float32) for _ in range(3)]
    aux = np.concatenate(coarse, axis=-1)
    one = MaskedMaskLoss(pos_weight=3.0)
    expected = sum(0.5 ** (k + 1) * f(one(y, c)) for k, c in enumerate(coarse))
    assert f(DeepSupervisionLoss(pos_weight=3.0)(y, aux)) == pytest.approx(expected, rel=1e-5)
    # Unknown masks add nothing here either.
    unknown = pack_mask(mask, np.zeros(3, np.float32))
    assert f(DeepSupervisionLoss()(unknown, aux)) == 0.0
    losses, weights = build_losses(LossConfig(mask_weight=1.5), ["class", "mask", AUX_MASK])
    assert isinstance(losses[AUX_MASK], DeepSupervisionLoss) and weights[AUX_MASK] == 1.5
    assert DeepSupervisionLoss.from_config(losses[AUX_MASK].get_config()).name == "mask_aux_loss"
