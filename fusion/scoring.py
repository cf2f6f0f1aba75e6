"""One scoring path: per-slice results of a model over reader batches, and metrics.json.

`fusion-train` (validation, in memory) and `fusion-evaluate` (held-out split, exported model)
both call `collect` and `compute_metrics`, so ``RUN/metrics.json`` and ``REPORT/metrics.json``
have one shape and name the same quantities the same way. `collect` takes anything with
`fusion.inference.Predictor`'s ``predict(images, batch_size, tta)``; `ModelPredictor` gives an
in-memory Keras model that method.

metrics.json (shared part): ``n_slices``, ``classification`` (per type AUC, AUPRC,
sensitivity, specificity, F1 at the thresholds with bootstrap intervals, macro averages, the
derived "multi" category, "by_context"), ``segmentation`` (Dice / IoU distributions, empty
predictions on bleeding slices, intervals), ``area`` (agreement of fractions and mm²),
``summary`` (the headline figures, flat) and ``notes``.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from data_build.schema import LABEL_NAMES, TYPE_NAMES
from fusion import metrics as M
from fusion import targets
from fusion.targets import MASK_THRESHOLD, target_to_area

if TYPE_CHECKING:
    from fusion.inference import Predictor

#: Overlays kept for each of the best and worst slices.
N_OVERLAYS = 4


class ModelPredictor:
    """An in-memory Keras model (outputs "class", "area", "mask") with `Predictor.predict`'s
    interface, for validation during training. The whole reader batch goes through one
    ``predict_on_batch``; the images are at the model's size, so nothing is resized."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, images: np.ndarray, batch_size: int = 8, tta: str | None = None) -> dict[str, np.ndarray]:
        del batch_size, tta  # one call per reader batch; no test-time augmentation in validation
        out = self.model.predict_on_batch(images)
        n = len(images)
        probabilities = np.asarray(out["class"], np.float32)
        area = (target_to_area(np.asarray(out["area"], np.float64)[:, 0]) if "area" in out
                else np.full(n, np.nan))
        mask = (np.asarray(out["mask"], np.float32) if "mask" in out
                else np.full((*images.shape[:3], 1), np.nan, np.float32))
        return {"probabilities": probabilities, "area_fraction": area, "mask": mask,
                "decisions": (probabilities >= 0.5).astype(np.int32)}


def multi_probability(p_types: np.ndarray) -> np.ndarray:
    """P(two or more of the types) from per-type probabilities, assuming independence.

    Args:
      p_types: [N, T] probabilities of the T types.

    Returns:
      [N] float64 = 1 - P(none) - P(exactly one).
    """
    p = np.clip(np.asarray(p_types, dtype=np.float64), 0.0, 1.0)
    q = 1.0 - p
    none = np.prod(q, axis=1)
    exactly_one = np.zeros(p.shape[0])
    for j in range(p.shape[1]):
        exactly_one += p[:, j] * np.prod(np.delete(q, j, axis=1), axis=1)
    return np.clip(1.0 - none - exactly_one, 0.0, 1.0)


@dataclass
class Collected:
    """Per-slice results of one pass over the split (numpy, N slices)."""

    ids: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    has_labels: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    decisions: list[np.ndarray] = field(default_factory=list)
    area_pred: list[np.ndarray] = field(default_factory=list)
    area_mask: list[np.ndarray] = field(default_factory=list)
    area_true: list[np.ndarray] = field(default_factory=list)
    has_area: list[np.ndarray] = field(default_factory=list)
    area_mm2_true: list[np.ndarray] = field(default_factory=list)
    has_area_mm2: list[np.ndarray] = field(default_factory=list)
    mm2_per_fraction: list[np.ndarray] = field(default_factory=list)
    has_mask: list[np.ndarray] = field(default_factory=list)
    mask_predicted: list[np.ndarray] = field(default_factory=list)
    dice: list[np.ndarray] = field(default_factory=list)
    iou: list[np.ndarray] = field(default_factory=list)
    true_nonempty: list[np.ndarray] = field(default_factory=list)
    pred_nonempty: list[np.ndarray] = field(default_factory=list)
    # pixels at the model's size: in both masks, in the prediction, in the reference
    pixels_both: list[np.ndarray] = field(default_factory=list)
    pixels_pred: list[np.ndarray] = field(default_factory=list)
    pixels_true: list[np.ndarray] = field(default_factory=list)
    # (dice, tiebreak, id, image, true, pred) heaps for the overlays
    best: list[tuple[float, int, str, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )
    worst: list[tuple[float, int, str, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )
    counter: int = 0  # overlay candidates seen (tiebreak: the earlier slice wins)
    # the mask threshold the per-slice mask figures above were counted at
    mask_threshold: float = MASK_THRESHOLD
    # with a mask grid (calibration): [B, T] pixels in both masks / predicted at each grid threshold
    mask_grid: tuple[float, ...] = ()
    grid_both: list[np.ndarray] = field(default_factory=list)
    grid_pred: list[np.ndarray] = field(default_factory=list)
    pixels_total: list[np.ndarray] = field(default_factory=list)

    def cat(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros((0,))

    def use_mask_threshold(self, threshold: float) -> None:
        """Re-count every per-slice mask figure at `threshold`, one of `mask_grid` (from the
        grid counts; the model is not run again). Overlays are not re-cut: collect with
        ``n_overlays=0`` before calling this."""
        if threshold not in self.mask_grid or self.best or self.worst:
            raise ValueError(f"threshold {threshold} is not in the collected mask grid {self.mask_grid}, "
                             f"or overlays were kept")
        j = self.mask_grid.index(threshold)
        both, pred, true = self.cat("grid_both")[:, j], self.cat("grid_pred")[:, j], self.cat("pixels_true")
        self.pixels_both, self.pixels_pred = [both], [pred]
        self.dice = [M.dice_from_counts(both, pred, true)]
        self.iou = [M.iou_from_counts(both, pred, true)]
        self.pred_nonempty = [pred > 0]
        self.area_mask = [pred / self.cat("pixels_total")]
        self.mask_threshold = float(threshold)


def _np(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _ids(value: Any) -> list[str]:
    arr = _np(value).reshape(-1)
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr]


def _keep(heap: list[Any], item: tuple[Any, ...], k: int) -> None:
    if k <= 0:
        return
    if len(heap) < k:
        heapq.heappush(heap, item)
    elif item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def collect(
    predictor: Predictor | ModelPredictor,
    batches: Iterable[Mapping[str, Any]],
    tta: str | None = None,
    batch_size: int = 8,
    n_overlays: int = N_OVERLAYS,
    progress: Callable[[int], None] | None = None,
    mask_threshold: float = MASK_THRESHOLD,
    mask_grid: tuple[float, ...] = (),
) -> Collected:
    """Run the model over reader batches (`fusion.data` "Reader output" dicts).

    Args:
      predictor: the loaded model.
      batches: iterable of dicts with image [B, S, S, 4], labels [B, 6], has_labels, mask
        [B, S, S, 1], has_mask, area_fraction, has_area, area_mm2, has_area_mm2,
        pixel_spacing [B, 2] (mm at size S), has_spacing, id.
      tta: "none" or "flip"; None: the predictor's own (`Predictor.predict`'s default).
      batch_size: slices per model call.
      n_overlays: best and worst slices kept for the report.
      progress: called with the number of slices done after each batch.
      mask_threshold: mask probability at which a pixel is bleed (the run's calibrated one).
      mask_grid: also count pixels at each of these thresholds (`Collected.use_mask_threshold`,
        calibration).

    Returns:
      The per-slice results.
    """
    c = Collected(mask_threshold=float(mask_threshold), mask_grid=tuple(mask_grid))
    for batch in batches:
        images = _np(batch["image"]).astype(np.float32)
        out = predictor.predict(images, batch_size=batch_size, tta=tta)
        _add_batch(c, batch, images, out, n_overlays)
        if progress is not None:
            progress(len(images))
    return c


def _add_batch(
    c: Collected, batch: Mapping[str, Any], images: np.ndarray, out: Mapping[str, np.ndarray],
    n_overlays: int,
) -> None:
    """Append one batch's per-slice results to `c` (masks are scored here, then dropped)."""
    n, s_h, s_w = images.shape[:3]
    ids = _ids(batch["id"])
    c.ids.extend(ids)
    c.labels.append(_np(batch["labels"]).astype(np.float64).reshape(n, -1))
    c.has_labels.append(_np(batch["has_labels"]).reshape(n) > 0.5)
    c.probabilities.append(out["probabilities"].astype(np.float64))
    c.decisions.append(out["decisions"].astype(np.int32))
    # A model without a mask head returns NaN masks ("not predicted", fusion.export).
    c.mask_predicted.append(np.isfinite(out["mask"]).reshape(n, -1).all(axis=1))
    pred_masks = targets.binary_mask(out["mask"][..., 0], c.mask_threshold)  # [B, S, S]
    true_masks = _np(batch["mask"]).reshape(n, s_h, s_w) >= 0.5
    if c.mask_grid:
        both_t, pred_t = M.grid_pixel_counts(out["mask"][..., 0], true_masks, c.mask_grid)
        c.grid_both.append(both_t)
        c.grid_pred.append(pred_t)
        c.pixels_total.append(np.full(n, float(s_h * s_w)))
    c.area_pred.append(out["area_fraction"].astype(np.float64))
    c.area_mask.append(pred_masks.reshape(n, -1).mean(axis=1))
    c.area_true.append(_np(batch["area_fraction"]).astype(np.float64).reshape(n))
    c.has_area.append(_np(batch["has_area"]).reshape(n) > 0.5)
    c.area_mm2_true.append(_np(batch["area_mm2"]).astype(np.float64).reshape(n))
    spacing = _np(batch["pixel_spacing"]).astype(np.float64).reshape(n, 2)
    has_spacing = _np(batch["has_spacing"]).reshape(n) > 0.5
    c.has_area_mm2.append((_np(batch["has_area_mm2"]).reshape(n) > 0.5) & has_spacing)
    # pixel_spacing is mm per pixel at size S, so the image covers S*S*row*col mm^2
    c.mm2_per_fraction.append(targets.mm2_per_fraction(s_h, s_w, spacing))
    has_mask = _np(batch["has_mask"]).reshape(n) > 0.5
    c.has_mask.append(has_mask)
    both, pred, true = M.pixel_counts(pred_masks, true_masks)  # one pass; the rest derive
    c.pixels_both.append(both)
    c.pixels_pred.append(pred)
    c.pixels_true.append(true)
    d = M.dice_from_counts(both, pred, true)
    c.dice.append(d)
    c.iou.append(M.iou_from_counts(both, pred, true))
    true_any = true > 0
    c.true_nonempty.append(true_any)
    c.pred_nonempty.append(pred > 0)
    for i in np.flatnonzero(has_mask & true_any):
        c.counter += 1
        item = (images[i, ..., 0], true_masks[i], pred_masks[i])
        _keep(c.best, (float(d[i]), -c.counter, ids[i], *item), n_overlays)
        _keep(c.worst, (-float(d[i]), -c.counter, ids[i], *item), n_overlays)


def _ci(fn: Callable[..., float], *arrays: np.ndarray, n: int, seed: int) -> list[Any] | None:
    if n <= 0:
        return None
    return M.nan_to_none(list(M.bootstrap_ci(fn, *arrays, n=n, seed=seed)))


def _class_block(
    y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int
) -> dict[str, Any]:
    block = M.class_metrics(y, p, threshold)
    if n_boot > 0:
        ci = M.bootstrap_class_metrics(y, p, threshold, n=n_boot, seed=seed)
        block["ci"] = {k: list(v) for k, v in ci.items()}
    else:
        block["ci"] = {}
    return M.nan_to_none(block)


def context_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Per-type AUC when the type is alone on a slice vs. beside another hemorrhage type.

    For each of the five types t (`TYPE_NAMES`, not "any"): the negatives are all slices
    without t; "alone" takes as positives the slices whose only positive type is t,
    "with_other" the slices with t and at least one other type. Each subset's AUC is that of
    the probability of t over (its positives + all negatives), None when undefined (no
    positives or no negatives). No bootstrap intervals.

    Args:
      labels: [N, 6] 0/1 in `LABEL_NAMES` order (rows with known labels only).
      probabilities: [N, 6].

    Returns:
      ``{type: {"n_neg": int, "alone": {"n_pos": int, "auc": float | None},
      "with_other": {"n_pos": int, "auc": float | None}}}`` in `TYPE_NAMES` order.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    type_idx = [LABEL_NAMES.index(t) for t in TYPE_NAMES]
    types = labels[:, type_idx] > 0
    n_types = types.sum(axis=1)
    out: dict[str, Any] = {}
    for k, name in enumerate(TYPE_NAMES):
        has_t = types[:, k]
        neg = ~has_t
        block: dict[str, Any] = {"n_neg": int(neg.sum())}
        subsets = (("alone", has_t & (n_types == 1)), ("with_other", has_t & (n_types >= 2)))
        for key, pos in subsets:
            keep = pos | neg
            auc = math.nan
            if pos.any() and neg.any():
                auc = M.roc_auc(pos[keep].astype(np.float64), probabilities[keep, type_idx[k]])
            block[key] = {"n_pos": int(pos.sum()), "auc": M.nan_to_none(auc)}
        out[name] = block
    return out


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    decisions: np.ndarray,
    thresholds: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-label metrics with bootstrap intervals, macro averages and the "multi" category.

    Args:
      labels: [N, 6] 0/1 in `LABEL_NAMES` order (rows with known labels only).
      probabilities: [N, 6].
      decisions: [N, 6] int, the model's decisions at `thresholds`.
      thresholds: [6].
      n_boot: bootstrap resamples (0 = no intervals).

    Returns:
      ``{"n", "per_class": {name: {...metrics, "ci": {...}}}, "macro", "macro_types",
      "multi", "by_context"}`` with None for undefined values. "by_context" (see
      `context_metrics`) holds, per type t, the AUC of P(t) with t alone on the slice vs.
      beside another type: negatives are all slices without t, positives the slices whose
      only type is t ("alone") or with t and at least one other type ("with_other").
    """
    report = M.classification_report(labels, probabilities, thresholds, LABEL_NAMES)
    for j, name in enumerate(LABEL_NAMES):
        report["per_class"][name] = _class_block(
            labels[:, j], probabilities[:, j], float(thresholds[j]), n_boot, seed
        )
    keys = ("auc", "auprc", "f1", "sensitivity", "specificity")
    report["macro_types"] = M.nan_to_none(
        {
            k: M.mean_defined([report["per_class"][t][k] for t in TYPE_NAMES])
            for k in keys
        }
    )
    type_idx = [LABEL_NAMES.index(t) for t in TYPE_NAMES]
    y_multi = (labels[:, type_idx].sum(axis=1) >= 2).astype(np.float64)
    p_multi = multi_probability(probabilities[:, type_idx])
    d_multi = (decisions[:, type_idx].sum(axis=1) >= 2).astype(np.float64)
    multi = _class_block(y_multi, d_multi, 0.5, n_boot, seed)
    # Ranking metrics from P(>= 2 types), operating point from the type decisions.
    multi["auc"] = M.nan_to_none(M.roc_auc(y_multi, p_multi))
    multi["auprc"] = M.nan_to_none(M.average_precision(y_multi, p_multi))
    if n_boot > 0:
        ci = M.bootstrap_class_metrics(y_multi, p_multi, 0.5, n=n_boot, seed=seed)
        multi["ci"]["auc"] = M.nan_to_none(list(ci["auc"]))
        multi["ci"]["auprc"] = M.nan_to_none(list(ci["auprc"]))
    multi["threshold"] = None
    multi["rule"] = ">= 2 positive type decisions; AUC from P(>=2) assuming independent types"
    report["multi"] = multi
    report["by_context"] = context_metrics(labels, probabilities)
    return report


def _agreement_block(pred: np.ndarray, true: np.ndarray, n_boot: int, seed: int) -> dict:
    block: dict[str, Any] = M.agreement(pred, true)
    block["ci"] = {
        "mae": _ci(lambda a, b: float(np.mean(np.abs(a - b))), pred, true, n=n_boot, seed=seed),
        "bias": _ci(lambda a, b: float(np.mean(a - b)), pred, true, n=n_boot, seed=seed),
    }
    return M.nan_to_none(block)


def compute_metrics(
    c: Collected, thresholds: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics.json content (without run metadata) and the report's plot data.

    Args:
      c: per-slice results (`collect`).
      thresholds: [6] decision thresholds in `LABEL_NAMES` order.
      n_boot: bootstrap resamples for the 95 % intervals (0: none).
      seed: bootstrap seed.
    """
    notes: list[str] = []
    plots: dict[str, Any] = {"roc": [], "pr": [], "reliability": []}
    result: dict[str, Any] = {"n_slices": len(c.ids)}
    result["classification"] = _classification_part(c, thresholds, n_boot, seed, plots, notes)
    result["segmentation"] = _segmentation_part(c, n_boot, seed, plots, notes)
    result["area"] = _area_part(c, n_boot, seed, plots, notes)
    result["summary"] = summary(result)
    result["notes"] = notes
    return result, plots


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of a metrics.json, flat (None where undefined)."""
    cls, seg, area = result.get("classification", {}), result.get("segmentation", {}), result.get("area", {})
    macro = cls.get("macro") or {}
    out: dict[str, Any] = {
        "macro_auc": macro.get("auc"),
        "macro_auc_types": (cls.get("macro_types") or {}).get("auc"),
        "macro_auprc": macro.get("auprc"),
        "macro_f1": macro.get("f1"),
    }
    if seg.get("n"):
        out.update(dice=seg["dice"]["mean"], iou=seg["iou"]["mean"],
                   dice_nonempty=seg["dice_nonempty"]["mean"],
                   empty_prediction_rate=seg["empty_prediction_rate"])
    if "fraction" in area:
        out["area_fraction_mae"] = area["fraction"]["mae"]
    if "mm2" in area:
        out["area_mm2_mae"] = area["mm2"]["mae"]
    return M.nan_to_none(out)


def _classification_part(
    c: Collected, thresholds: np.ndarray, n_boot: int, seed: int, plots: dict[str, Any], notes: list[str]
) -> dict[str, Any]:
    labels = np.concatenate(c.labels) if c.labels else np.zeros((0, len(LABEL_NAMES)))
    probs = np.concatenate(c.probabilities) if c.probabilities else np.zeros_like(labels)
    decisions = np.concatenate(c.decisions) if c.decisions else np.zeros_like(labels, np.int32)
    has_labels = c.cat("has_labels").astype(bool)
    if not has_labels.any():
        notes.append("no slice of this split has labels; classification metrics skipped")
        return {"n": 0}
    y, p, d = labels[has_labels], probs[has_labels], decisions[has_labels]
    block = classification_metrics(y, p, d, thresholds, n_boot, seed)
    for j, name in enumerate(LABEL_NAMES):
        if 0 < y[:, j].sum() < len(y):
            fpr, tpr, _ = M.roc_curve(y[:, j], p[:, j])
            prec, rec, _ = M.precision_recall_curve(y[:, j], p[:, j])
            plots["roc"].append((name, fpr, tpr))
            plots["pr"].append((name, np.r_[0.0, rec], np.r_[prec[0], prec]))
        else:
            notes.append(f"{name}: only one label value on this split; no ROC/PR curve")
        rel = M.reliability_curve(y[:, j], p[:, j])
        plots["reliability"].append((name, rel["mean_predicted"], rel["fraction_positive"]))
        block["per_class"][name]["ece"] = M.nan_to_none(rel["ece"])
    return block


def _segmentation_part(
    c: Collected, n_boot: int, seed: int, plots: dict[str, Any], notes: list[str]
) -> dict[str, Any]:
    known_mask = c.cat("has_mask").astype(bool)
    has_mask = known_mask & c.cat("mask_predicted").astype(bool)
    if known_mask.any() and not has_mask.any():
        notes.append("the model predicts no mask (no mask head); segmentation metrics skipped")
    dice_v, iou_v = c.cat("dice")[has_mask], c.cat("iou")[has_mask]
    nonempty = c.cat("true_nonempty").astype(bool)[has_mask]
    seg = M.segmentation_summary(dice_v, iou_v, nonempty, c.cat("pred_nonempty").astype(bool)[has_mask])
    seg["ci"] = {
        "dice": _ci(np.mean, dice_v, n=n_boot, seed=seed),
        "iou": _ci(np.mean, iou_v, n=n_boot, seed=seed),
        "dice_nonempty": _ci(np.mean, dice_v[nonempty], n=n_boot, seed=seed),
        "iou_nonempty": _ci(np.mean, iou_v[nonempty], n=n_boot, seed=seed),
    }
    seg["mask_size"] = M.mask_size_summary(
        *(c.cat(k)[has_mask] for k in ("pixels_both", "pixels_pred", "pixels_true")))
    seg["mask_threshold"] = c.mask_threshold
    plots["dice"] = dice_v.tolist()
    if not known_mask.any():
        notes.append("no slice of this split has a known mask; segmentation metrics skipped")
    return seg


def _area_part(
    c: Collected, n_boot: int, seed: int, plots: dict[str, Any], notes: list[str]
) -> dict[str, Any]:
    area: dict[str, Any] = {}
    area_predicted = np.isfinite(c.cat("area_pred"))
    if c.ids and not area_predicted.any():
        notes.append("the model predicts no area (no area head); area metrics skipped")
    has_area = c.cat("has_area").astype(bool) & area_predicted
    if has_area.any():
        pred, true = c.cat("area_pred")[has_area], c.cat("area_true")[has_area]
        area["fraction"] = _agreement_block(pred, true, n_boot, seed)
        plots["area_fraction"] = {"mean": (pred + true) / 2, "diff": pred - true}
        from_mask = has_area & c.cat("mask_predicted").astype(bool)
        if from_mask.any():
            area["fraction_from_mask"] = _agreement_block(
                c.cat("area_mask")[from_mask], c.cat("area_true")[from_mask], n_boot, seed
            )
    has_mm2 = c.cat("has_area_mm2").astype(bool) & area_predicted
    if has_mm2.any():
        pred = c.cat("area_pred")[has_mm2] * c.cat("mm2_per_fraction")[has_mm2]
        true = c.cat("area_mm2_true")[has_mm2]
        area["mm2"] = _agreement_block(pred, true, n_boot, seed)
        plots["area_mm2"] = {"mean": (pred + true) / 2, "diff": pred - true}
    else:
        notes.append("no slice with known pixel spacing and area: no area error in mm^2")
    return area


#: Share of bleeding slices with an empty predicted mask above which a run is
#: flagged as collapsed (issue 10's goal allows at most 10 % per fold).
COLLAPSE_RATE = 0.10


def collapse_note(metrics: Mapping[str, Any]) -> str | None:
    """A warning when the mask head predicts empty masks on too many bleeding slices, else None.

    Segmentation trained with Dice losses on little data can collapse to all-background masks
    (issue 10 saw it on real slices); the validation loss alone does not show it.
    """
    rate = (metrics.get("summary") or {}).get("empty_prediction_rate")
    if rate is None or rate <= COLLAPSE_RATE:
        return None
    n = (metrics.get("segmentation") or {}).get("n_true_nonempty")
    return (f"the mask head predicts an EMPTY mask on {rate:.0%} of the {n} bleeding slices "
            f"scored (collapse to background; more than {COLLAPSE_RATE:.0%}): train longer, or "
            "compare presets with benchmarks/proxy_benchmark.py before trusting its masks")
