"""Flip test-time augmentation against none, paired on finished proxy-benchmark cells.

For each cell folder (``OUT/cells/PRESET/seedS/foldF`` of `proxy_benchmark.py`) the cell's
trained run scores its fold's held-out test split twice, with ``tta="none"`` and ``"flip"``,
through the predictor ``fusion-evaluate --tta none`` opens (the SavedModel of a run exported
one pass, the run's model.keras when its export flips in its graph; both run the two modes,
and agree to float rounding) and its reader, masks cut at the run's
calibrated mask threshold. Printed: per cell the mean per-slice Dice and the empty predicted
masks on bleeding slices of both; per preset and seed the macro AUC over the 5 types pooled
over its folds (as the proxy table pools it); the count of cells where flip raised Dice.
With ``--flip-calibration`` also the mask threshold that `fusion.metrics.calibrate_mask_threshold`
picks on the fold's validation split from flipped passes, and the held-out flip Dice at it.

    python benchmarks/tta_pairs.py OUT/cells/*/seed*/fold* [--json pairs.json] [--flip-calibration]

Needs a Keras backend that loads the runs (TensorFlow by default). The figures quoted in
docs/benchmarks.md ("Flip test-time augmentation by default") come from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data_build.files import atomic_write_text  # noqa: E402
from fusion import metrics as M  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_benchmark import pooled_macro_auc  # noqa: E402

MODES = ("none", "flip")


def _batches(shards: Path, split: str, image_size: int) -> Any:
    from fusion.reader import ShardSequence

    return ShardSequence(shards, split, image_size=image_size, batch_size=8, as_dicts=True)


def score_cell(cell: Path, image_size: int, flip_calibration: bool = False) -> dict[str, Any]:
    """Both modes on one cell: mean Dice, empty masks on bleeding slices, probabilities; with
    ``flip_calibration`` also `flip_calibrated`'s figures (the model loaded, the test split read
    once)."""
    from fusion.keras_predictor import open_model

    # "none": a predictor that can run both modes (a flip export's run: its model.keras).
    predictor = open_model(cell / "run", "tensorflow", "none")
    folds = cell.parents[3] / "folds" / cell.name
    masks: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    probabilities: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    labels, truth = [], []
    for batch in _batches(folds / "test-shards", "test", image_size):
        images = np.asarray(batch["image"], np.float32)
        truth.append(np.asarray(batch["mask"])[..., 0] >= 0.5)
        labels.append(np.asarray(batch["labels"], np.float64))
        for mode in MODES:
            out = predictor.predict(images, batch_size=8, tta=mode)
            masks[mode].append(out["mask"][..., 0])
            probabilities[mode].append(out["probabilities"].astype(np.float64))
    true = np.concatenate(truth)
    prob = {m: np.concatenate(masks[m]) for m in MODES}
    bleeding = true.reshape(len(true), -1).any(axis=1)
    cut = {m: prob[m] >= predictor.mask_threshold for m in MODES}
    # group: OUT:PRESET/seedS (two OUT folders may hold the same preset name)
    return {
        "cell": str(cell), "group": f"{cell.parents[3].name}:{cell.parents[1].name}/{cell.parent.name}",
        "dice": {m: float(np.mean(M.dice(cut[m], true))) for m in MODES},
        "empty": {m: int((bleeding & ~cut[m].reshape(len(true), -1).any(axis=1)).sum()) for m in MODES},
        "labels": np.concatenate(labels),
        "probabilities": {m: np.concatenate(probabilities[m]) for m in MODES},
        **({"calibration": flip_calibrated(predictor, folds, image_size, prob["flip"], true)}
           if flip_calibration else {}),
    }


def flip_calibrated(predictor: Any, folds: Path, image_size: int, prob_test: np.ndarray,
                    true_test: np.ndarray) -> dict[str, float]:
    """The run's threshold against one calibrated on flipped validation passes; held-out flip
    Dice (``prob_test``, the flipped test masks) at both. The run's own is calibrated on
    un-augmented passes, as fusion-train does."""
    probs, truth = [], []
    for b in _batches(folds / "train-shards", "val", image_size):
        probs.append(predictor.predict(np.asarray(b["image"], np.float32), tta="flip")["mask"][..., 0])
        truth.append(np.asarray(b["mask"])[..., 0] >= 0.5)
    prob_val, true_val = np.concatenate(probs), np.concatenate(truth)
    hit, pred = M.grid_pixel_counts(prob_val, true_val, M.MASK_GRID)
    threshold, _ = M.calibrate_mask_threshold(hit, pred, true_val.reshape(len(true_val), -1).sum(1))

    def dice(t: float) -> float:
        return float(np.mean(M.dice(prob_test >= t, true_test)))

    return {"run_threshold": predictor.mask_threshold, "flip_threshold": threshold,
            "dice_at_run_threshold": dice(predictor.mask_threshold), "dice_at_flip_threshold": dice(threshold)}


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """`proxy_benchmark.pooled_macro_auc` on the 5 types (column 0, "any", left out)."""
    return pooled_macro_auc(labels[:, 1:], probabilities[:, 1:])[0]


def summarise(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-cell pairs, per-group pooled macro AUC and the count of cells flip improved."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        groups[c["group"]].append(c)
    auc = {
        g: {m: macro_auc(np.concatenate([c["labels"] for c in cs]),
                         np.concatenate([c["probabilities"][m] for c in cs])) for m in MODES}
        for g, cs in groups.items()
    }
    diffs = [c["dice"]["flip"] - c["dice"]["none"] for c in cells]
    return {
        "cells": [{"cell": c["cell"], "dice": c["dice"], "empty": c["empty"]} for c in cells],
        "macro_auc": auc,
        "flip_higher": sum(d > 0 for d in diffs), "n": len(diffs),
        "mean_dice_change": float(np.mean(diffs)) if diffs else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cells", nargs="+", type=Path, help="Proxy cell folders (OUT/cells/P/seedS/foldF).")
    p.add_argument("--image-size", type=int, default=256, help="The protocol's size [256].")
    p.add_argument("--json", type=Path, help="Also write the figures here.")
    p.add_argument("--flip-calibration", action="store_true",
                   help="Also calibrate the mask threshold on flipped validation passes.")
    args = p.parse_args(argv)
    cells, calibrations = [], {}
    for cell in args.cells:
        c = score_cell(cell, args.image_size, args.flip_calibration)
        print(f"{c['group']}/{cell.name}: Dice none {c['dice']['none']:.3f} flip "
              f"{c['dice']['flip']:.3f} ({c['dice']['flip'] - c['dice']['none']:+.3f}); "
              f"empty {c['empty']['none']} / {c['empty']['flip']}", flush=True)
        cells.append(c)
        if args.flip_calibration:
            k = calibrations[str(cell)] = c["calibration"]
            print(f"  mask threshold {k['run_threshold']:.2f} (run) / {k['flip_threshold']:.2f} (flipped "
                  f"validation): flip Dice {k['dice_at_run_threshold']:.4f} / {k['dice_at_flip_threshold']:.4f}",
                  flush=True)
    result = {**summarise(cells), "flip_calibration": calibrations}
    for g, a in result["macro_auc"].items():
        print(f"{g}: pooled macro AUC none {a['none']:.3f} flip {a['flip']:.3f}")
    print(f"flip raised Dice in {result['flip_higher']} of {result['n']} cells, mean "
          f"{result['mean_dice_change']:+.4f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
