"""Held-out evaluation: run an exported model over a split of shards, write metrics.json and a
self-contained report.html.

``evaluate(model, shards, split, out)`` streams the split through `fusion.reader.ShardSequence`,
keeps per-slice predictions (never the full masks: Dice/IoU are computed per batch), and
writes::

    OUT/metrics.json   per-type AUC, AUPRC, sensitivity, specificity, F1 at the thresholds,
                       macro averages, "multi" (>= 2 types), per-type AUC alone vs. beside
                       another type ("by_context"), Dice / IoU distribution, area
                       agreement (fraction and mm^2), 95 % bootstrap intervals, notes
    OUT/report.html    the same as tables, ROC / PR / reliability curves, Dice histogram,
                       Bland-Altman plots and overlays of the best and worst slices
    OUT/predictions.csv  one row per slice: id, labels, probabilities, areas, Dice

Thresholds are the run's calibrated ones (`fusion.inference`); without them 0.5 is used and a
note says so.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from data_build.files import atomic_write_text
from data_build.schema import LABEL_NAMES
from fusion import metrics as M
from fusion.errors import FusionError
from fusion.inference import DEFAULT_TTA, Predictor
from fusion.report import overlay_png, render_html
from fusion.scoring import Collected, collapse_note, collect, compute_metrics

log = logging.getLogger(__name__)


class EvaluateError(FusionError):
    """The evaluation cannot run (empty split, unusable output folder)."""


def _overlays(c: Collected) -> list[dict[str, Any]]:
    """Best slices (highest Dice first), then worst (lowest first); a slice shown once."""
    items: list[dict[str, Any]] = []
    shown: set[str] = set()
    ordered = [("best", score, rest) for score, *rest in sorted(c.best, reverse=True)] + [
        ("worst", -score, rest) for score, *rest in sorted(c.worst, reverse=True)
    ]
    for kind, dice_value, (_, sid, image, true, pred) in ordered:
        if sid in shown:  # small splits: the best and the worst overlap
            continue
        shown.add(sid)
        items.append(
            {"kind": kind, "id": sid, "dice": dice_value, "png": overlay_png(image, true, pred)}
        )
    return items


def _predictions_csv(c: Collected) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["id", *(f"label_{n}" for n in LABEL_NAMES), *(f"p_{n}" for n in LABEL_NAMES),
         *(f"decision_{n}" for n in LABEL_NAMES), "has_labels", "area_fraction_true",
         "area_fraction_pred", "has_mask", "dice", "iou", "pixels_true", "pixels_pred",
         "pixels_both"]
    )
    labels = np.concatenate(c.labels) if c.labels else np.zeros((0, 6))
    probs = np.concatenate(c.probabilities) if c.probabilities else np.zeros((0, 6))
    dec = np.concatenate(c.decisions) if c.decisions else np.zeros((0, 6), int)
    cols = [c.cat(k) for k in ("has_labels", "area_true", "area_pred", "has_mask", "dice", "iou")]
    pixels = [c.cat(k) for k in ("pixels_true", "pixels_pred", "pixels_both")]
    for i, sid in enumerate(c.ids):
        hl, at, ap, hm, di, io_ = (col[i] for col in cols)
        writer.writerow(
            [sid, *(int(v) for v in labels[i]), *(f"{v:.6f}" for v in probs[i]),
             *(int(v) for v in dec[i]), int(hl), f"{at:.6f}" if hm else "", f"{ap:.6f}",
             int(hm), f"{di:.6f}" if hm else "", f"{io_:.6f}" if hm else "",
             *(f"{int(col[i])}" if hm else "" for col in pixels)]
        )
    return buf.getvalue()


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate` wrote."""

    metrics_path: Path
    report_path: Path
    predictions_path: Path
    metrics: dict[str, Any]


def write_outputs(
    out: Path, metrics: dict[str, Any], plots: dict[str, Any], c: Collected
) -> EvaluationResult:
    """Write metrics.json, report.html and predictions.csv into ``out`` (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    report_path = out / "report.html"
    predictions_path = out / "predictions.csv"
    atomic_write_text(
        metrics_path, json.dumps(M.nan_to_none(metrics), indent=2, allow_nan=False) + "\n"
    )
    atomic_write_text(report_path, render_html(metrics, plots, _overlays(c)))
    atomic_write_text(predictions_path, _predictions_csv(c))
    return EvaluationResult(metrics_path, report_path, predictions_path, metrics)


def resolve_thresholds(predictor: Predictor) -> tuple[np.ndarray, str]:
    """The predictor's calibrated thresholds, else 0.5 per label; and where they came from."""
    if predictor.thresholds is not None:
        return np.asarray(predictor.thresholds, dtype=np.float64), "model (calibrated on val)"
    return np.full(len(LABEL_NAMES), M.DEFAULT_THRESHOLD), "default 0.5 (no thresholds found)"


def evaluate(
    predictor: Predictor,
    batches: Iterable[Mapping[str, Any]],
    out: Path,
    *,
    model_name: str = "",
    shards: str = "",
    split: str = "test",
    tta: str = DEFAULT_TTA,
    batch_size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> EvaluationResult:
    """Evaluate ``predictor`` on reader ``batches`` and write the report into ``out``.

    Raises:
      EvaluateError: the batches hold no slice.
    """
    c = collect(predictor, batches, tta=tta, batch_size=batch_size, progress=progress,
                mask_threshold=predictor.mask_threshold)
    if not c.ids:
        raise EvaluateError(
            f"split {split!r} of {shards or 'the shards'} holds no slice; check --split and "
            f"the manifest counts"
        )
    thresholds, source = resolve_thresholds(predictor)
    # Re-cut the probabilities so every reported operating point (also after TTA averaging,
    # and "multi", which is built from decisions) uses exactly `thresholds`.
    c.decisions = [(p >= thresholds[None, :]).astype(np.int32) for p in c.probabilities]
    metrics, plots = compute_metrics(c, thresholds, n_boot=n_boot, seed=seed)
    if predictor.thresholds is None:
        metrics["notes"].insert(0, "no calibrated thresholds found with the model; used 0.5")
    metrics["notes"].extend(f"threshold calibration: {n}" for n in predictor.threshold_notes)
    collapsed = collapse_note(metrics)
    if collapsed:
        log.warning("%s", collapsed)
        metrics["notes"].insert(0, collapsed)
    metrics = {
        "model": model_name,
        "shards": shards,
        "split": split,
        "tta": tta,
        "bootstrap": n_boot,
        "threshold_source": source,
        "thresholds": {n: float(t) for n, t in zip(LABEL_NAMES, thresholds)},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **metrics,
    }
    return write_outputs(out, metrics, plots, c)
