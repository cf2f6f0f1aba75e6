"""NumPy metrics for the three tasks: type classification, segmentation and bleed area.

NumPy only (no TensorFlow, no scikit-learn), so training, evaluation and tests share one
implementation. Conventions:

- ``y`` are 0/1 labels, ``p`` probabilities in [0, 1]; a slice is called positive when
  ``p >= threshold``.
- A metric that is undefined on the given data (AUC with one label value, sensitivity without
  positives, F1 = 0/0) returns ``nan``; the report functions turn ``nan`` into ``None`` so the
  JSON says "not measurable" instead of a misleading number.
- Masks are boolean ``[N, H, W]`` (a trailing channel axis of 1 is accepted).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np

from fusion.errors import FusionError

log = logging.getLogger(__name__)

#: Quantiles reported for per-slice Dice / IoU distributions.
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Threshold given to a class that has no positive example to calibrate on.
DEFAULT_THRESHOLD = 0.5
#: Fewer positive examples than this on the calibration split earn a note: the F1-optimal cut
#: then rests on a few slices (on the demo's 10-patient validation split, subarachnoid blood's
#: cut gave test sensitivity 0.39-0.61 at test AUC 0.98).
MIN_CALIBRATION_POSITIVES = 20


class MetricError(FusionError, ValueError):
    """Inputs to a metric have the wrong shape or values (the message says which)."""


# --- helpers ---------------------------------------------------------------------------------


def _binary(y: Any, name: str = "y") -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise MetricError(f"{name} must hold only 0/1 labels; got values {np.unique(arr)[:5]}")
    return arr.astype(bool)


def _scores(p: Any, n: int, name: str = "p") -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.size != n:
        raise MetricError(f"{name} has {arr.size} values but the labels have {n}")
    if not np.all(np.isfinite(arr)):
        raise MetricError(f"{name} holds NaN or infinite scores; check the model outputs")
    return arr


def _pair(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    yb = _binary(y)
    return yb, _scores(p, yb.size)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else math.nan


def nan_to_none(value: Any) -> Any:
    """Replace NaN / inf floats (also inside dicts, lists, tuples) by None, for JSON output."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return nan_to_none(value.tolist())
    return value


def mean_defined(values: Sequence[float | None]) -> float:
    """Mean of the finite values (None and NaN left out); ``nan`` when there is none."""
    defined = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(defined)) if defined else math.nan


# --- classification --------------------------------------------------------------------------


def _rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as in the Mann-Whitney U statistic)."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Start index of each run of equal values.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], sorted_vals.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve; ties between a positive and a negative count one half.

    Args:
      y: [N] 0/1 labels.
      p: [N] scores.

    Returns:
      AUC in [0, 1], ``nan`` when y holds a single label value.
    """
    yb, s = _pair(y, p)
    n_pos = int(yb.sum())
    n_neg = yb.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _rank_average(s)
    u = ranks[yb].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """TP and FP when calling ``p >= t`` positive, for every distinct score t, high to low.

    Returns:
      (thresholds [T] descending, tp [T], fp [T]) as float64.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores: all tied samples switch together.
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(y_sorted)[last].astype(np.float64)
    fp = (last + 1) - tp
    return s_sorted[last], tp, fp


def roc_curve(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points, starting at (0, 0).

    Returns:
      (fpr [T+1], tpr [T+1], thresholds [T+1]); the first threshold is +inf. Rates are ``nan``
      when the class has no positives (tpr) or no negatives (fpr).
    """
    yb, s = _pair(y, p)
    t, tp, fp = _threshold_counts(yb, s)
    n_pos, n_neg = yb.sum(), (~yb).sum()
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(t.size + 1, np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(t.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, t]


def precision_recall_curve(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points at every distinct score, high threshold first.

    Returns:
      (precision [T], recall [T], thresholds [T]); recall is ``nan`` without positives.
    """
    yb, s = _pair(y, p)
    t, tp, fp = _threshold_counts(yb, s)
    n_pos = yb.sum()
    precision = tp / (tp + fp)
    recall = tp / n_pos if n_pos else np.full(t.size, np.nan)
    return precision, recall, t


def average_precision(y: Any, p: Any) -> float:
    """Average precision (area under the step PR curve), ``sum_k (R_k - R_{k-1}) * P_k``.

    Tied scores form one operating point (as in scikit-learn's ``average_precision_score``).

    Returns:
      AP in [0, 1], ``nan`` when y has no positives.
    """
    precision, recall, _ = precision_recall_curve(y, p)
    if recall.size == 0 or not np.all(np.isfinite(recall)):
        return math.nan
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(y: Any, p: Any, threshold: float) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) when calling ``p >= threshold`` positive."""
    yb, s = _pair(y, p)
    pred = s >= threshold
    tp = int(np.sum(pred & yb))
    fp = int(np.sum(pred & ~yb))
    fn = int(np.sum(~pred & yb))
    tn = int(np.sum(~pred & ~yb))
    return tp, fp, tn, fn


def f1_score(y: Any, p: Any, threshold: float) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) at ``p >= threshold``; ``nan`` when there are no positives
    and none predicted (0/0)."""
    tp, fp, _, fn = confusion(y, p, threshold)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def sensitivity_specificity(y: Any, p: Any, threshold: float) -> tuple[float, float]:
    """(sensitivity = TP / (TP + FN), specificity = TN / (TN + FP)) at ``p >= threshold``.

    Each is ``nan`` when its denominator is 0 (no positives, resp. no negatives).
    """
    tp, fp, tn, fn = confusion(y, p, threshold)
    return _ratio(tp, tp + fn), _ratio(tn, tn + fp)


def best_f1_threshold(y: Any, p: Any) -> tuple[float, float]:
    """The threshold maximising F1 on (y, p), and that F1.

    Tie rule: among operating points with the same best F1 the one with the **highest** score
    cut is kept (fewest positive calls, so the best specificity). The returned threshold is the
    midpoint between that cut score and the next lower distinct score, so the decisions on this
    split are unchanged while a slightly lower score elsewhere is not flipped by a hair; when the
    cut is the lowest score, the cut itself is returned.

    Returns:
      (threshold, f1). ``(DEFAULT_THRESHOLD, nan)`` when y has no positives.
    """
    yb, s = _pair(y, p)
    n_pos = yb.sum()
    if n_pos == 0:
        return DEFAULT_THRESHOLD, math.nan
    t, tp, fp = _threshold_counts(yb, s)
    f1 = 2 * tp / (tp + fp + n_pos)  # 2TP + FP + FN = TP + FP + n_pos
    best = int(np.argmax(f1))  # first maximum = highest cut, since t is descending
    if best + 1 < t.size:
        threshold = (t[best] + t[best + 1]) / 2.0
    else:
        threshold = t[best]
    return float(threshold), float(f1[best])


def calibrate_thresholds(
    y: Any,
    p: Any,
    names: Sequence[str] | None = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Per-class thresholds maximising F1 on the given split (see `best_f1_threshold`).

    Args:
      y: [N, K] 0/1 labels.
      p: [N, K] probabilities.
      names: K class names, used in notes.
      notes: when given, a message is appended for each class left at `DEFAULT_THRESHOLD`
        because it has no positive example, and for each class with fewer than
        `MIN_CALIBRATION_POSITIVES` positives, whose threshold is rough (also logged as
        warnings).

    Returns:
      [K] float64 thresholds.
    """
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(p, dtype=np.float64)
    if y_arr.ndim != 2 or y_arr.shape != p_arr.shape:
        raise MetricError(
            f"calibrate_thresholds expects y and p of the same shape [N, K]; got "
            f"{y_arr.shape} and {p_arr.shape}"
        )
    k = y_arr.shape[1]
    names = list(names) if names is not None else [str(i) for i in range(k)]
    out = np.empty(k, dtype=np.float64)
    for j in range(k):
        out[j], _ = best_f1_threshold(y_arr[:, j], p_arr[:, j])
        n_pos = int(np.sum(y_arr[:, j] > 0))
        msg = None
        if n_pos == 0:
            msg = (
                f"class {names[j]!r} has no positive example on this split; "
                f"threshold left at {DEFAULT_THRESHOLD}"
            )
        elif n_pos < MIN_CALIBRATION_POSITIVES:
            msg = (
                f"class {names[j]!r} has only {n_pos} positive examples on this split: its "
                f"threshold {out[j]:.3f} is rough, and sensitivity on other data may differ a "
                f"lot; a larger validation split (fusion-build --split-fractions) steadies it"
            )
        if msg is not None:
            _note(notes, msg)
    return out


def class_metrics(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """AUC, AUPRC, F1, sensitivity, specificity, counts for one class (``nan`` = undefined)."""
    yb, s = _pair(y, p)
    sens, spec = sensitivity_specificity(yb, s, threshold)
    tp, fp, tn, fn = confusion(yb, s, threshold)
    return {
        "auc": roc_auc(yb, s),
        "auprc": average_precision(yb, s),
        "f1": f1_score(yb, s, threshold),
        "sensitivity": sens,
        "specificity": spec,
        "threshold": float(threshold),
        "positives": int(yb.sum()),
        "negatives": int((~yb).sum()),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def classification_report(
    y: Any, p: Any, thresholds: Any, names: Sequence[str]
) -> dict[str, Any]:
    """Per-class and macro-averaged classification metrics, JSON ready.

    Args:
      y: [N, K] 0/1 labels.
      p: [N, K] probabilities.
      thresholds: [K] decision thresholds (``p >= t`` is positive).
      names: K class names.

    Returns:
      ``{"n": N, "per_class": {name: {auc, auprc, f1, sensitivity, specificity, threshold,
      positives, negatives, tp, fp, tn, fn}}, "macro": {auc, auprc, f1, sensitivity,
      specificity}}``. Undefined values are None; macro averages are over the classes where
      the metric is defined (None when none is).
    """
    y_arr = np.asarray(y, dtype=np.float64)
    p_arr = np.asarray(p, dtype=np.float64)
    t_arr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if y_arr.ndim != 2 or y_arr.shape != p_arr.shape:
        raise MetricError(f"y and p must both be [N, K]; got {y_arr.shape} and {p_arr.shape}")
    k = y_arr.shape[1]
    if t_arr.size != k or len(names) != k:
        raise MetricError(
            f"{k} classes but {t_arr.size} thresholds and {len(names)} names were given"
        )
    per_class = {
        name: class_metrics(y_arr[:, j], p_arr[:, j], t_arr[j]) for j, name in enumerate(names)
    }
    keys = ("auc", "auprc", "f1", "sensitivity", "specificity")
    macro = {key: mean_defined([m[key] for m in per_class.values()]) for key in keys}
    return nan_to_none({"n": int(y_arr.shape[0]), "per_class": per_class, "macro": macro})


def reliability_curve(y: Any, p: Any, bins: int = 10) -> dict[str, Any]:
    """Reliability (calibration) diagram data on equal-width probability bins.

    Returns:
      ``{"bin_edges": [bins+1], "mean_predicted": [bins], "fraction_positive": [bins],
      "count": [bins], "ece": expected calibration error}``; empty bins hold ``nan``.
    """
    yb, s = _pair(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=s, minlength=bins)
    sum_y = np.bincount(idx, weights=yb.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    ece = (
        float(np.nansum(count * np.abs(mean_p - frac)) / count.sum()) if count.sum() else math.nan
    )
    return {
        "bin_edges": edges,
        "mean_predicted": mean_p,
        "fraction_positive": frac,
        "count": count,
        "ece": ece,
    }


# --- segmentation ----------------------------------------------------------------------------


def _masks(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(pred)
    b = np.asarray(true)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if b.ndim == 4 and b.shape[-1] == 1:
        b = b[..., 0]
    if a.ndim == 2 and b.ndim == 2:  # one slice
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 3:
        raise MetricError(
            f"masks must both be [N, H, W] (or [N, H, W, 1]); got {np.shape(pred)} and "
            f"{np.shape(true)}"
        )
    return a.astype(bool), b.astype(bool)


def pixel_counts(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slice pixel counts: (|A & B|, |A|, |B|) for predicted A and reference B.

    Dice, IoU and the mask-size figures all derive from them (`dice_from_counts`,
    `iou_from_counts`, `mask_size_summary`), so a caller that needs several counts once.

    Returns:
      Three [N] float64 arrays (float so sums over many slices never overflow).
    """
    a, b = _masks(pred, true)
    return (np.sum(a & b, axis=(1, 2), dtype=np.float64), np.sum(a, axis=(1, 2), dtype=np.float64),
            np.sum(b, axis=(1, 2), dtype=np.float64))


def dice_from_counts(both: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-slice Dice from `pixel_counts`; 1.0 where both masks are empty."""
    total = pred + true
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * both / total, 1.0)


def iou_from_counts(both: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-slice IoU from `pixel_counts` (|A | B| = |A| + |B| - |A & B|); 1.0 where both are empty."""
    union = pred + true - both
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, both / union, 1.0)


def dice(pred: Any, true: Any) -> np.ndarray:
    """Per-slice Dice = 2 |A & B| / (|A| + |B|); 1.0 when both masks are empty.

    Args:
      pred: [N, H, W] bool predicted masks.
      true: [N, H, W] bool reference masks.

    Returns:
      [N] float64 in [0, 1].
    """
    return dice_from_counts(*pixel_counts(pred, true))


#: Mask thresholds `calibrate_mask_threshold` tries: 0.30, 0.35, ..., 0.90.
MASK_GRID: tuple[float, ...] = tuple(round(0.30 + 0.05 * i, 2) for i in range(13))
#: Mean validation Dice within this of the best counts as a tie; the tie nearest 0.5 wins, so
#: a flat curve on a small split keeps 0.5 (on the low-data proxy 0.005 never cost a fold more
#: than 0.002 of held-out Dice; docs/benchmarks.md, "The mask threshold").
MASK_TIE = 0.005
#: Fewer validation slices with bleed in a known mask than this: the threshold stays at 0.5.
MIN_MASK_CALIBRATION_SLICES = 5


def grid_pixel_counts(prob: Any, true: Any, grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice (|A_t & B|, |A_t|) for predicted masks A_t = prob >= t at each t of `grid`.

    Args:
      prob: [N, H, W] mask probabilities (NaN counts as 0: "not predicted").
      true: [N, H, W] bool reference masks.

    Returns:
      Two [N, T] float64 arrays, T = len(grid).
    """
    p = np.nan_to_num(np.asarray(prob, dtype=np.float32), nan=0.0)
    counts = [pixel_counts(p >= t, true)[:2] for t in grid]  # shapes checked there
    return np.stack([c[0] for c in counts], axis=1), np.stack([c[1] for c in counts], axis=1)


def calibrate_mask_threshold(
    hit: Any, pred: Any, true: Any, grid: Sequence[float] = MASK_GRID,
    notes: list[str] | None = None,
) -> tuple[float, dict[str, float]]:
    """The mask threshold of `grid` with the best mean per-slice Dice on a calibration split,
    among those that leave no more bleeding slices empty than 0.5 does.

    A tie (within `MASK_TIE` of the best) goes to the threshold nearest 0.5. The mean runs over
    every slice given (a known-empty slice scores 1 when left empty, 0 otherwise), as
    ``fusion-evaluate``'s mean Dice does. A higher cut can raise that mean while it erases a
    faint bleed (an empty mask scores 0 on one slice and sharpens many): such cuts are refused,
    with a note, since a missed bleed is the error issue 10's empty-mask goal counts. With fewer
    than `MIN_MASK_CALIBRATION_SLICES` bleeding slices the threshold stays 0.5 and a note says so.

    Args:
      hit, pred: [N, T] pixel counts at each grid threshold (`grid_pixel_counts`).
      true: [N] reference pixels per slice.
      notes: messages are appended here (and logged).

    Returns:
      (threshold, {str(t): mean Dice at t}) — the curve, for the run's record.
    """
    h, p = np.asarray(hit, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if h.shape != p.shape or h.ndim != 2 or h.shape != (t.size, len(grid)):
        raise MetricError(f"counts {h.shape}, {p.shape} do not match {t.size} slices x {len(grid)} thresholds")
    curve = dice_from_counts(h, p, t[:, None]).mean(axis=0) if t.size else np.zeros(len(grid))
    table = {f"{g:.2f}": float(d) for g, d in zip(grid, curve)}
    n_bleeding = int(np.sum(t > 0))
    if n_bleeding < MIN_MASK_CALIBRATION_SLICES:
        _note(notes, f"only {n_bleeding} slices with bleed in a known mask on this split (fewer than "
                     f"{MIN_MASK_CALIBRATION_SLICES}): mask threshold left at {DEFAULT_THRESHOLD}")
        return DEFAULT_THRESHOLD, table
    emptied = np.sum((p == 0) & (t[:, None] > 0), axis=0)  # bleeding slices left empty, per cut
    half = int(np.argmin([abs(g - DEFAULT_THRESHOLD) for g in grid]))
    allowed = emptied <= emptied[half]
    chosen = _nearest_half_among_best(grid, np.where(allowed, curve, -np.inf))
    unguarded = _nearest_half_among_best(grid, curve)
    if unguarded != chosen:
        j = list(grid).index(unguarded)
        _note(notes, f"mask threshold {unguarded:.2f} (mean validation Dice {curve[j]:.3f}) would leave "
                     f"{int(emptied[j])} of {n_bleeding} bleeding validation slices empty, "
                     f"{int(emptied[half])} at {grid[half]:.2f}: kept {chosen:.2f}")
    return chosen, table


def _nearest_half_among_best(grid: Sequence[float], curve: np.ndarray) -> float:
    """The grid value nearest 0.5 among those within `MASK_TIE` of the curve's best."""
    ties = [g for g, d in zip(grid, curve) if d >= curve.max() - MASK_TIE]
    return float(min(ties, key=lambda g: (abs(g - DEFAULT_THRESHOLD), g)))


def _note(notes: list[str] | None, message: str) -> None:
    """Log a calibration warning and keep it for the run's record (``thresholds.json`` notes)."""
    log.warning(message)
    if notes is not None:
        notes.append(message)


def iou(pred: Any, true: Any) -> np.ndarray:
    """Per-slice IoU (Jaccard) = |A & B| / |A | B|; 1.0 when both masks are empty.

    Returns:
      [N] float64 in [0, 1].
    """
    return iou_from_counts(*pixel_counts(pred, true))


def mask_size_summary(hit: Any, pred: Any, true: Any) -> dict[str, Any]:
    """Over- or under-segmentation from per-slice pixel counts (`pixel_counts`), JSON ready.

    Args:
      hit, pred, true: [N] pixels in both masks, in the predicted mask, in the reference.

    Returns:
      ``{"pixel_precision", "pixel_recall"}`` pooled over the slices (bleed pixels predicted
      that are bleed; bleed pixels found), and ``"area_ratio"``: the distribution (mean,
      median, quantiles) of predicted / reference pixels over slices whose reference has bleed
      (1 = right size; issue 10 saw 2.8-4.7x on real slices). None where undefined.
    """
    h, p, t = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (hit, pred, true))
    if not h.size == p.size == t.size:
        raise MetricError(f"per-slice arrays differ in length: {h.size}, {p.size}, {t.size}")
    bleeding = t > 0
    return nan_to_none({
        "pixel_precision": _ratio(float(h.sum()), float(p.sum())),
        "pixel_recall": _ratio(float(h.sum()), float(t.sum())),
        "area_ratio": _distribution(p[bleeding] / t[bleeding]),
    })


def _distribution(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"mean": math.nan, "median": math.nan, "quantiles": {}}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "quantiles": {
            f"q{int(round(q * 100)):02d}": float(np.quantile(values, q)) for q in QUANTILES
        },
    }


def segmentation_summary(
    dice_values: Any, iou_values: Any, true_nonempty: Any, pred_nonempty: Any
) -> dict[str, Any]:
    """`segmentation_report` from per-slice values (lets callers stream over batches).

    Args:
      dice_values, iou_values: [N] per-slice Dice and IoU.
      true_nonempty, pred_nonempty: [N] bool, whether truth / prediction has any pixel.
    """
    d = np.asarray(dice_values, dtype=np.float64).reshape(-1)
    j = np.asarray(iou_values, dtype=np.float64).reshape(-1)
    true_any = np.asarray(true_nonempty, dtype=bool).reshape(-1)
    pred_any = np.asarray(pred_nonempty, dtype=bool).reshape(-1)
    if not d.size == j.size == true_any.size == pred_any.size:
        raise MetricError(
            f"per-slice arrays differ in length: {d.size}, {j.size}, {true_any.size}, "
            f"{pred_any.size}"
        )
    n_nonempty = int(true_any.sum())
    n_empty = int((~true_any).sum())
    return nan_to_none(
        {
            "n": int(d.size),
            "n_true_nonempty": n_nonempty,
            "dice": _distribution(d),
            "iou": _distribution(j),
            "dice_nonempty": _distribution(d[true_any]),
            "iou_nonempty": _distribution(j[true_any]),
            "empty_prediction_rate": _ratio(int(np.sum(true_any & ~pred_any)), n_nonempty),
            "false_positive_rate": _ratio(int(np.sum(~true_any & pred_any)), n_empty),
        }
    )


def segmentation_report(pred_masks: Any, true_masks: Any) -> dict[str, Any]:
    """Dice / IoU summary over slices with known masks, JSON ready.

    Args:
      pred_masks: [N, H, W] bool predicted masks.
      true_masks: [N, H, W] bool reference masks.

    Returns:
      ``{"n": N, "n_true_nonempty": ..., "dice": {mean, median, quantiles}, "iou": {...},
      "dice_nonempty": {...}, "iou_nonempty": {...} (slices whose truth has bleed),
      "empty_prediction_rate": fraction of slices with bleed in the truth where the prediction
      is empty, "false_positive_rate": fraction of truly empty slices where something was
      predicted}``. None where undefined.
    """
    a, b = _masks(pred_masks, true_masks)
    return segmentation_summary(dice(a, b), iou(a, b), b.any(axis=(1, 2)), a.any(axis=(1, 2)))


# --- area ------------------------------------------------------------------------------------


def agreement(pred: Any, true: Any) -> dict[str, float]:
    """Bland-Altman agreement of a predicted quantity with its reference (same units).

    Args:
      pred: [N] predicted values (e.g. bleed area in mm^2 or as a fraction of the image).
      true: [N] reference values.

    Returns:
      ``{"n", "mae", "bias" (mean of pred - true), "sd" (of the differences), "loa_low",
      "loa_high" (bias -/+ 1.96 sd), "pearson_r"}``; ``nan`` where undefined.
    """
    a = np.asarray(pred, dtype=np.float64).reshape(-1)
    b = np.asarray(true, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise MetricError(f"pred has {a.size} values but true has {b.size}")
    n = a.size
    if n == 0:
        return {k: math.nan for k in ("mae", "bias", "sd", "loa_low", "loa_high", "pearson_r")} | {
            "n": 0
        }
    diff = a - b
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    r = math.nan
    if n > 1 and a.std() > 0 and b.std() > 0:
        r = float(np.corrcoef(a, b)[0, 1])
    return {
        "n": n,
        "mae": float(np.abs(diff).mean()),
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "pearson_r": r,
    }


# --- uncertainty -----------------------------------------------------------------------------


def _index_chunks(size: int, n: int, seed: int, chunk: int = 100) -> Any:
    """Bootstrap row indices, ``n`` resamples of ``size`` rows, as [m, size] chunks (m <= chunk).

    `bootstrap_ci` and `bootstrap_class_metrics` draw through this one generator, so with the
    same seed they see exactly the same resamples.
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        m = min(chunk, n - done)
        yield rng.integers(0, size, size=(m, size))
        done += m


def _percentile_ci(stats: Any, n: int, alpha: float) -> tuple[float, float]:
    values = np.asarray(stats, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < max(1, int(0.1 * n)):
        return math.nan, math.nan
    lo, hi = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_ci(
    fn: Callable[..., float],
    *arrays: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``fn(*arrays)``.

    The arrays are resampled together along their first axis (the same rows for each), ``n``
    times with a seeded generator, so the interval is reproducible. Resamples on which ``fn``
    is undefined (returns ``nan``/None, e.g. AUC of a resample without positives) are dropped.

    Args:
      fn: statistic of the arrays, returning a float.
      arrays: arrays with the same first dimension N.
      n: number of resamples.
      seed: random seed.
      alpha: 1 - confidence level (0.05 gives a 95 % interval).

    Returns:
      (lo, hi); ``(nan, nan)`` when N is 0 or fewer than 10 % of resamples are defined.
    """
    if not arrays:
        raise MetricError("bootstrap_ci needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    size = arrs[0].shape[0] if arrs[0].ndim else 0
    if any(a.ndim == 0 or a.shape[0] != size for a in arrs):
        raise MetricError(
            f"bootstrap_ci arrays must share their first dimension; got {[a.shape for a in arrs]}"
        )
    if size == 0 or n <= 0:
        return math.nan, math.nan
    stats = []
    for chunk in _index_chunks(size, n, seed):
        for idx in chunk:
            value = fn(*(a[idx] for a in arrs))
            stats.append(math.nan if value is None else float(value))
    return _percentile_ci(stats, n, alpha)


def bootstrap_class_metrics(
    y: Any,
    p: Any,
    threshold: float,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Bootstrap intervals of AUC, AUPRC, sensitivity, specificity and F1 of one class at once.

    Same resamples and result as `bootstrap_ci` with `roc_auc`, `average_precision`, ... (the
    tests check it), but vectorised: each resample is a vector of row counts applied as
    weights to the once-sorted scores, so 1000 resamples of 10^4 slices take about a second
    instead of minutes.

    Returns:
      ``{"auc": (lo, hi), "auprc": ..., "sensitivity": ..., "specificity": ..., "f1": ...}``,
      ``(nan, nan)`` where undefined.
    """
    yb, s = _pair(y, p)
    size = yb.size
    keys = ("auc", "auprc", "sensitivity", "specificity", "f1")
    if size == 0 or n <= 0:
        return {k: (math.nan, math.nan) for k in keys}
    order = np.argsort(s, kind="mergesort")  # ascending
    s_sorted = s[order]
    y_sorted = yb[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # tie groups
    pos_w = yb.astype(np.float64)
    called = (s >= threshold).astype(np.float64)
    stats: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for chunk in _index_chunks(size, n, seed):
        m = chunk.shape[0]
        flat = (chunk + (np.arange(m) * size)[:, None]).ravel()
        w = np.bincount(flat, minlength=m * size).reshape(m, size).astype(np.float64)
        ws = w[:, order]
        pg = np.add.reduceat(ws * y_sorted, starts, axis=1)  # [m, G] positives per group
        ng = np.add.reduceat(ws * (1.0 - y_sorted), starts, axis=1)
        n_pos = pg.sum(axis=1)
        n_neg = ng.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            below = np.cumsum(ng, axis=1) - ng  # negatives scored strictly lower
            auc = (pg * (below + 0.5 * ng)).sum(axis=1) / (n_pos * n_neg)
            tp = np.cumsum(pg[:, ::-1], axis=1)  # descending thresholds
            fp = np.cumsum(ng[:, ::-1], axis=1)
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            ap = (pg[:, ::-1] * precision).sum(axis=1) / n_pos
            tp_t = w @ (pos_w * called)
            fn_t = w @ (pos_w * (1.0 - called))
            fp_t = w @ ((1.0 - pos_w) * called)
            tn_t = w @ ((1.0 - pos_w) * (1.0 - called))
            stats["auc"].append(np.where((n_pos > 0) & (n_neg > 0), auc, np.nan))
            stats["auprc"].append(np.where(n_pos > 0, ap, np.nan))
            stats["sensitivity"].append(np.where(n_pos > 0, tp_t / n_pos, np.nan))
            stats["specificity"].append(np.where(n_neg > 0, tn_t / n_neg, np.nan))
            den = 2 * tp_t + fp_t + fn_t
            stats["f1"].append(np.where(den > 0, 2 * tp_t / den, np.nan))
    return {k: _percentile_ci(np.concatenate(v), n, alpha) for k, v in stats.items()}
