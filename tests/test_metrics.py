"""fusion.metrics against values computed by hand on tiny arrays."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fusion import metrics as M


def test_roc_auc_simple_and_with_ties() -> None:
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # pos {0.5, 0.9} vs neg {0.5, 0.2}: pairs 0.5 (tie) + 1 + 1 + 1 = 3.5 of 4
    assert M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert M.roc_auc([1, 1, 0], [0.2, 0.2, 0.2]) == pytest.approx(0.5)


def test_roc_auc_undefined_for_one_class() -> None:
    assert math.isnan(M.roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(M.roc_auc([0, 0], [0.1, 0.5]))


def test_average_precision_hand_values() -> None:
    # ranked: 0.8(+) P=1 R=.5; 0.4(-); 0.35(+) P=2/3 R=1 -> .5*1 + .5*2/3
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    # ties form one point: t=0.5 -> P=.5 R=.5; t=0.2 -> P=2/3 R=1
    assert M.average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.25 + 1 / 3)
    assert math.isnan(M.average_precision([0, 0], [0.3, 0.4]))


def test_f1_sens_spec_at_threshold() -> None:
    y = [1, 1, 0, 0, 1]
    p = [0.9, 0.4, 0.6, 0.1, 0.5]  # at 0.5: pred 1 0 1 0 1 -> tp 2 fp 1 fn 1 tn 1
    assert M.f1_score(y, p, 0.5) == pytest.approx(4 / 6)
    sens, spec = M.sensitivity_specificity(y, p, 0.5)
    assert sens == pytest.approx(2 / 3)
    assert spec == pytest.approx(1 / 2)
    # p == threshold counts as positive
    assert M.confusion([1], [0.5], 0.5) == (1, 0, 0, 0)
    assert math.isnan(M.f1_score([0, 0], [0.1, 0.2], 0.5))


def test_calibrate_thresholds_best_f1_and_tie_rule() -> None:
    notes: list[str] = []
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    p = np.array([[0.9, 0.9, 0.3], [0.8, 0.8, 0.1], [0.7, 0.7, 0.2], [0.1, 0.6, 0.4]])
    t = M.calibrate_thresholds(y, p, names=["a", "b", "c"], notes=notes)
    # class a: perfect at cut 0.8 -> midpoint to next score 0.7
    assert t[0] == pytest.approx(0.75)
    # class b: F1 2/3 at cut 0.9 and at cut 0.6: the higher cut wins -> (0.9 + 0.8) / 2
    assert t[1] == pytest.approx(0.85)
    # class c: no positives -> 0.5 with a note naming it; a and b have few positives: notes
    assert t[2] == 0.5
    assert len(notes) == 3
    assert "'a' has only 2 positive" in notes[0] and "'b' has only 2 positive" in notes[1]
    assert "'c' has no positive" in notes[2]
    # the calibrated threshold reproduces the best F1 on the split
    assert M.f1_score(y[:, 0], p[:, 0], t[0]) == pytest.approx(1.0)


def test_calibrate_thresholds_notes_nothing_with_enough_positives() -> None:
    n = M.MIN_CALIBRATION_POSITIVES
    y = np.r_[np.ones(n), np.zeros(n)][:, None]
    p = np.r_[np.linspace(0.6, 0.9, n), np.linspace(0.1, 0.4, n)][:, None]
    notes: list[str] = []
    M.calibrate_thresholds(y, p, notes=notes)
    assert notes == []
    M.calibrate_thresholds(y[1:], p[1:], notes=notes)  # one positive fewer
    assert len(notes) == 1 and f"only {n - 1} positive" in notes[0]


def test_calibrate_thresholds_rejects_bad_shapes() -> None:
    with pytest.raises(M.MetricError, match="same shape"):
        M.calibrate_thresholds(np.zeros((3, 2)), np.zeros((3, 3)))


def test_labels_must_be_binary() -> None:
    with pytest.raises(M.MetricError, match="0/1"):
        M.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(M.MetricError, match="NaN"):
        M.roc_auc([0, 1], [0.1, float("nan")])


def test_dice_iou_with_empty_masks() -> None:
    pred = np.zeros((4, 4, 4), bool)
    true = np.zeros((4, 4, 4), bool)
    # 0: both empty -> 1; 1: pred empty, truth not -> 0; 2: pred not, truth empty -> 0
    true[1, :2, :2] = True
    pred[2, 0, 0] = True
    # 3: pred 4 px, truth 2 px, overlap 2 -> dice 4/6, iou 2/4
    pred[3, 0, :4] = True
    true[3, 0, :2] = True
    np.testing.assert_allclose(M.dice(pred, true), [1.0, 0.0, 0.0, 2 / 3])
    np.testing.assert_allclose(M.iou(pred, true), [1.0, 0.0, 0.0, 0.5])
    # trailing channel axis accepted
    np.testing.assert_allclose(M.dice(pred[..., None], true[..., None]), M.dice(pred, true))
    with pytest.raises(M.MetricError):
        M.dice(pred, true[:2])


def test_segmentation_report() -> None:
    pred = np.zeros((4, 4, 4), bool)
    true = np.zeros((4, 4, 4), bool)
    true[1, :2, :2] = True
    pred[2, 0, 0] = True
    pred[3, 0, :4] = True
    true[3, 0, :2] = True
    r = M.segmentation_report(pred, true)
    assert r["n"] == 4 and r["n_true_nonempty"] == 2
    assert r["dice"]["mean"] == pytest.approx((1 + 0 + 0 + 2 / 3) / 4)
    assert r["dice"]["median"] == pytest.approx(1 / 3)
    assert r["dice_nonempty"]["mean"] == pytest.approx(1 / 3)
    assert r["empty_prediction_rate"] == pytest.approx(0.5)
    assert r["false_positive_rate"] == pytest.approx(0.5)
    assert set(r["dice"]["quantiles"]) == {"q05", "q25", "q50", "q75", "q95"}
    json.dumps(r, allow_nan=False)


def test_mask_size_summary_pools_pixels_and_ratios_bleeding_slices_only() -> None:
    pred = np.zeros((3, 4, 4), bool)
    true = np.zeros((3, 4, 4), bool)
    pred[0, :2, :4] = True  # 8 px predicted, 2 of them on the 2 px of truth: 4x too big
    true[0, 0, :2] = True
    true[1, :2, :2] = True  # 4 px missed entirely
    pred[2, 0, 0] = True  # 1 px on a slice without bleed: counts against precision only
    hit, p, t = M.pixel_counts(pred, true)
    np.testing.assert_array_equal(np.stack([hit, p, t]), [[2, 0, 0], [8, 0, 1], [2, 4, 0]])
    size = M.mask_size_summary(hit, p, t)
    assert size["pixel_precision"] == pytest.approx(2 / 9)
    assert size["pixel_recall"] == pytest.approx(2 / 6)
    assert size["area_ratio"]["median"] == pytest.approx(2.0)  # ratios 4 and 0
    assert size["area_ratio"]["mean"] == pytest.approx(2.0)
    nothing = M.mask_size_summary([], [], [])
    assert nothing["pixel_precision"] is None and nothing["area_ratio"]["median"] is None
    json.dumps(size, allow_nan=False)
    with pytest.raises(M.MetricError, match="differ in length"):
        M.mask_size_summary([1], [1, 2], [1])


def _blurred_slices(n: int, edge_p: float) -> tuple[np.ndarray, np.ndarray]:
    """n slices: a 4x4 bleed at p 0.95 inside an 8x8 halo at `edge_p` (an over-segmenting model)."""
    prob = np.zeros((n, 12, 12), np.float32)
    true = np.zeros((n, 12, 12), bool)
    prob[:, 2:10, 2:10] = edge_p
    prob[:, 4:8, 4:8] = 0.95
    true[:, 4:8, 4:8] = True
    return prob, true


def test_grid_pixel_counts_match_pixel_counts_at_each_threshold() -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((3, 6, 6)).astype(np.float32)
    prob[1, 0, 0] = np.nan  # "not predicted" counts as no bleed
    true = rng.random((3, 6, 6)) > 0.6
    hit, pred = M.grid_pixel_counts(prob, true, M.MASK_GRID)
    assert hit.shape == pred.shape == (3, len(M.MASK_GRID))
    for j, t in enumerate(M.MASK_GRID):
        both, p, _ = M.pixel_counts(np.nan_to_num(prob, nan=0.0) >= t, true)
        np.testing.assert_array_equal(hit[:, j], both)
        np.testing.assert_array_equal(pred[:, j], p)
    with pytest.raises(M.MetricError, match=r"masks must both be \[N, H, W\]"):
        M.grid_pixel_counts(prob, true[:, :5], M.MASK_GRID)


def test_calibrate_mask_threshold_cuts_a_halo_and_keeps_half_on_a_flat_curve() -> None:
    prob, true = _blurred_slices(6, edge_p=0.6)  # the halo reads as bleed at 0.5: 4x too big
    hit, pred = M.grid_pixel_counts(prob, true, M.MASK_GRID)
    t_px = true.reshape(6, -1).sum(axis=1)
    threshold, curve = M.calibrate_mask_threshold(hit, pred, t_px)
    assert curve["0.50"] == pytest.approx(2 * 16 / (64 + 16))
    assert curve[f"{threshold:.2f}"] == pytest.approx(1.0)
    assert threshold == pytest.approx(0.65)  # the first cut above the halo, nearest 0.5
    sharp, _ = _blurred_slices(6, edge_p=0.05)  # nothing between 0.3 and 0.9: every cut ties
    hit, pred = M.grid_pixel_counts(sharp, true, M.MASK_GRID)
    assert M.calibrate_mask_threshold(hit, pred, t_px)[0] == 0.5


def test_calibrate_mask_threshold_needs_bleeding_slices() -> None:
    prob, true = _blurred_slices(4, edge_p=0.6)
    hit, pred = M.grid_pixel_counts(prob, true, M.MASK_GRID)
    notes: list[str] = []
    threshold, curve = M.calibrate_mask_threshold(hit, pred, true.reshape(4, -1).sum(axis=1), notes=notes)
    assert threshold == 0.5 and len(curve) == len(M.MASK_GRID)
    assert "only 4 slices with bleed" in notes[0]
    with pytest.raises(M.MetricError, match="do not match"):
        M.calibrate_mask_threshold(hit[:, :3], pred[:, :3], [16] * 4)


def test_calibrate_mask_threshold_counts_false_positives_on_empty_slices() -> None:
    """Known-empty slices enter the mean (1 when left empty), so a cut that clears them wins."""
    prob, true = _blurred_slices(5, edge_p=0.05)
    empty = np.zeros((5, 12, 12), np.float32)
    empty[:, 0:3, 0:3] = 0.55  # a false positive at 0.5 on each normal slice
    prob, true = np.concatenate([prob, empty]), np.concatenate([true, np.zeros_like(true)])
    hit, pred = M.grid_pixel_counts(prob, true, M.MASK_GRID)
    threshold, curve = M.calibrate_mask_threshold(hit, pred, true.reshape(10, -1).sum(axis=1))
    assert curve["0.50"] == pytest.approx(0.5) and threshold == pytest.approx(0.6)


def test_calibrate_mask_threshold_never_erases_a_bleed_that_half_finds() -> None:
    """A higher cut would sharpen five haloed masks and erase one faint bleed (mean Dice 0.83
    against 0.50): refused, with a note; without the faint bleed the same cut is taken."""
    prob, true = _blurred_slices(6, edge_p=0.6)
    prob[5] = np.where(true[5], 0.62, 0.0)  # a faint bleed: found at 0.60, gone at 0.65
    hit, pred = M.grid_pixel_counts(prob, true, M.MASK_GRID)
    t_px = true.reshape(6, -1).sum(axis=1)
    notes: list[str] = []
    threshold, curve = M.calibrate_mask_threshold(hit, pred, t_px, notes=notes)
    assert curve["0.65"] == pytest.approx((5 + 0) / 6) and curve["0.60"] == pytest.approx(0.5)
    assert threshold == 0.5  # 0.30-0.60 keep the faint bleed and tie: the one nearest 0.5
    assert "0.65" in notes[0] and "1 of 6 bleeding validation slices empty, 0 at 0.50" in notes[0]
    assert M.calibrate_mask_threshold(hit[:5], pred[:5], t_px[:5])[0] == pytest.approx(0.65)


def test_classification_report_none_when_undefined() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.2], [0.1, 0.7], [0.6, 0.1], [0.4, 0.3]])
    r = M.classification_report(y, p, [0.5, 0.5], ["x", "y"])
    assert r["per_class"]["x"]["auc"] == pytest.approx(1.0)
    assert r["per_class"]["x"]["f1"] == pytest.approx(1.0)
    assert r["per_class"]["y"]["auc"] is None
    assert r["per_class"]["y"]["sensitivity"] is None
    assert r["per_class"]["y"]["specificity"] == pytest.approx(0.75)
    assert r["macro"]["auc"] == pytest.approx(1.0)  # over defined classes only
    assert r["macro"]["specificity"] == pytest.approx((1.0 + 0.75) / 2)
    json.dumps(r, allow_nan=False)
    with pytest.raises(M.MetricError, match="thresholds"):
        M.classification_report(y, p, [0.5], ["x", "y"])


def test_curves_and_reliability() -> None:
    fpr, tpr, _ = M.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(0.75)
    rel = M.reliability_curve([0, 1, 1, 0], [0.05, 0.95, 0.91, 0.15], bins=10)
    assert rel["count"][0] == 1 and rel["count"][9] == 2 and rel["count"][1] == 1
    assert rel["fraction_positive"][9] == 1.0
    assert math.isnan(rel["mean_predicted"][5])
    assert rel["ece"] == pytest.approx((0.05 + 2 * 0.07 + 0.15) / 4)  # count-weighted


def test_agreement() -> None:
    a = M.agreement([2.0, 4.0, 6.0], [1.0, 4.0, 4.0])  # diffs 1, 0, 2
    assert a["mae"] == pytest.approx(1.0)
    assert a["bias"] == pytest.approx(1.0)
    assert a["sd"] == pytest.approx(1.0)
    assert a["loa_low"] == pytest.approx(-0.96) and a["loa_high"] == pytest.approx(2.96)


def test_bootstrap_ci_reproducible_and_sane() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 1.0, 400)
    lo, hi = M.bootstrap_ci(np.mean, x, n=300, seed=3)
    assert lo < 10.0 < hi and hi - lo < 0.5
    assert (lo, hi) == M.bootstrap_ci(np.mean, x, n=300, seed=3)
    assert M.bootstrap_ci(np.mean, np.full(5, 2.0), n=50) == (2.0, 2.0)
    # joint resampling of two arrays; resamples with one label value are dropped, not NaN
    y = np.array([0, 1] * 10)
    p = y * 0.5 + 0.2
    assert M.bootstrap_ci(M.roc_auc, y, p, n=100) == (1.0, 1.0)
    assert all(math.isnan(v) for v in M.bootstrap_ci(M.roc_auc, np.ones(5), np.ones(5), n=20))
    with pytest.raises(M.MetricError, match="first dimension"):
        M.bootstrap_ci(M.roc_auc, y, p[:3])


@pytest.mark.parametrize("seed", [0, 7])
def test_bootstrap_class_metrics_matches_generic_bootstrap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(60) < 0.2).astype(float)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(60), 0, 1), 1)  # rounding makes ties
    fast = M.bootstrap_class_metrics(y, p, 0.5, n=150, seed=seed)
    slow = {
        "auc": M.bootstrap_ci(M.roc_auc, y, p, n=150, seed=seed),
        "auprc": M.bootstrap_ci(M.average_precision, y, p, n=150, seed=seed),
        "sensitivity": M.bootstrap_ci(
            lambda a, b: M.sensitivity_specificity(a, b, 0.5)[0], y, p, n=150, seed=seed),
        "specificity": M.bootstrap_ci(
            lambda a, b: M.sensitivity_specificity(a, b, 0.5)[1], y, p, n=150, seed=seed),
        "f1": M.bootstrap_ci(lambda a, b: M.f1_score(a, b, 0.5), y, p, n=150, seed=seed),
    }
    for key, (lo, hi) in slow.items():
        assert fast[key] == pytest.approx((lo, hi), abs=1e-12), key
    assert fast["auc"][0] < M.roc_auc(y, p) < fast["auc"][1]


def test_bootstrap_class_metrics_one_class() -> None:
    ci = M.bootstrap_class_metrics(np.zeros(10), np.linspace(0, 1, 10), 0.5, n=20)
    assert all(math.isnan(v) for v in ci["auc"] + ci["sensitivity"])
    lo, hi = ci["specificity"]  # defined: every resample has negatives
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
