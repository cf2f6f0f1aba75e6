"""benchmarks/missed_bleeds.py: the figures behind "An empty-mask rescue" (no model needed)."""

from __future__ import annotations

import numpy as np

from tests.benchmark_modules import load_benchmark

MB = load_benchmark("missed_bleeds")


def test_summary_separates_faint_misses_from_blind_ones_and_counts_normals() -> None:
    prob = np.zeros((5, 8, 8), np.float32)
    true = np.zeros((5, 8, 8), bool)
    true[0, 1:3, 1:3], prob[0, 1:3, 1:3] = True, 0.9     # found at the cut
    true[1, 4:6, 4:6], prob[1, 4:6, 4:6] = True, 0.3     # missed, faint: half the peak finds it
    true[2, 2:4, 2:4], prob[2, 6, 6] = True, 0.002       # missed, blind: no guess
    prob[3, 5, 5] = 0.4                                  # normal, called bleeding: a rescue adds it
    prob[4, 0:2, 0:2] = 0.7                              # normal with a mask at the cut
    p_any = np.array([0.99, 0.99, 0.99, 0.99, 0.1])
    s = MB.summarise(prob, true, p_any, cut=0.5, any_cut=0.9, fraction=0.5)
    assert (s["bleeding"], s["normal"]) == (3, 2)
    assert [m["index"] for m in s["missed"]] == [1, 2]
    assert s["missed"][0]["peak_relative_dice"] == 1.0 and s["missed"][1]["peak_relative_dice"] == 0.0
    assert s["missed"][1]["peak"] == np.float32(0.002) and s["missed_rescuable"] == 1
    assert (s["normal_with_mask"], s["normal_called"], s["normal_rescue_adds"]) == (1, 1, 1)
    assert s["dice_bleeding"] == s["dice_bleeding_vetoed"] == 1 / 3 and s["bleeding_not_called"] == 0
    p_any[0] = 0.5  # the head misses the found bleed: the reverse rule empties its mask
    vetoed = MB.summarise(prob, true, p_any, cut=0.5, any_cut=0.9, fraction=0.5)
    assert vetoed["bleeding_not_called"] == 1 and vetoed["dice_bleeding_vetoed"] == 0.0
