"""benchmarks/tta_pairs.py: the paired summary of flip TTA against none (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_modules import load_benchmark

TP = load_benchmark("tta_pairs")


def _cell(name: str, group: str, dice_none: float, dice_flip: float, flip_scores: bool) -> dict:
    labels = np.zeros((4, 6))
    labels[:2, 1] = 1  # epidural on the first two slices only; other types have one class
    good = np.array([0.9, 0.8, 0.2, 0.1])
    bad = good[::-1]
    probs = {"none": np.zeros((4, 6)), "flip": np.zeros((4, 6))}
    probs["none"][:, 1] = bad
    probs["flip"][:, 1] = good if flip_scores else bad
    return {"cell": name, "group": group, "dice": {"none": dice_none, "flip": dice_flip},
            "empty": {"none": 1, "flip": 0}, "labels": labels, "probabilities": probs}


def test_summary_counts_flip_gains_and_pools_auc_per_group() -> None:
    cells = [_cell("a", "out:fusion/seed0", 0.60, 0.65, True),
             _cell("b", "out:fusion/seed0", 0.70, 0.69, True),
             _cell("c", "out:plain/seed0", 0.50, 0.50, False)]
    result = TP.summarise(cells)
    assert (result["flip_higher"], result["n"]) == (1, 3)  # a tie is not a gain
    assert result["mean_dice_change"] == pytest.approx((0.05 - 0.01 + 0.0) / 3)
    auc = result["macro_auc"]
    assert auc["out:fusion/seed0"] == {"none": 0.0, "flip": 1.0}  # only epidural has both classes
    assert auc["out:plain/seed0"] == {"none": 0.0, "flip": 0.0}
    assert TP.macro_auc(np.zeros((3, 6)), np.zeros((3, 6))) is None
