"""benchmarks/missed_bleeds.py: the figures behind "An empty-mask rescue" (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from data_build.cases import Case
from tests.benchmark_modules import load_benchmark

MB = load_benchmark("missed_bleeds")


def slices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prob = np.zeros((7, 8, 8), np.float32)
    true = np.zeros((7, 8, 8), bool)
    true[0, 1:3, 1:3], prob[0, 1:3, 1:3] = True, 0.5     # found, exactly at the cut
    true[1, 4:6, 4:6], prob[1, 4:6, 4:6] = True, 0.3     # missed, faint: half the peak finds it
    prob[1, 4:6, 6] = 0.12                               # ... and a tail that 0.3 x the peak adds
    true[2, 2:4, 2:4], prob[2, 6, 6] = True, 0.002       # missed, blind: no guess
    prob[3, 5, 5] = 0.4                                  # normal, called: a rescue adds it
    prob[4, 0:2, 0:2] = 0.7                              # normal with a mask at the cut, not called
    prob[5, 3, 3] = 0.4                                  # normal, not called: no rescue
    prob[6, 0, 0] = 0.7                                  # normal with a mask, called
    p_any = np.array([0.9, 0.99, 0.99, 0.9, 0.1, 0.5, 0.99])  # 0.9: exactly at "any"'s threshold
    return prob, true, p_any


def test_summary_separates_faint_misses_from_blind_ones_and_counts_normals() -> None:
    prob, true, p_any = slices()
    s = MB.summarise(prob, true, p_any, cut=0.5, any_cut=0.9, fraction=0.5, ids=list("abcdefg"))
    assert (s["bleeding"], s["normal"]) == (3, 4)
    assert [(m["index"], m["id"]) for m in s["missed"]] == [(1, "b"), (2, "c")]
    assert s["missed"][0]["peak_relative_dice"] == 1.0 and s["missed"][1]["peak_relative_dice"] == 0.0
    assert s["missed"][1]["peak"] == np.float32(0.002) and s["missed_rescuable"] == 1
    assert (s["normal_with_mask"], s["normal_called"], s["normal_rescue_adds"]) == (2, 2, 1)
    assert s["normal_with_mask_vetoed"] == 1
    assert (s["normal_mask_pixels_median"], s["normal_mask_pixels_max"]) == (2.5, 4)  # slices 4 and 6
    assert s["dice_bleeding"] == s["dice_bleeding_vetoed"] == 1 / 3 and s["bleeding_not_called"] == 0
    wider = MB.summarise(prob, true, p_any, cut=0.5, any_cut=0.9, fraction=0.3)
    assert wider["missed"][0]["peak_relative_dice"] == pytest.approx(8 / 10)
    p_any[0] = 0.5  # the head misses the found bleed: the reverse rule empties its mask
    vetoed = MB.summarise(prob, true, p_any, cut=0.5, any_cut=0.9, fraction=0.5)
    assert vetoed["bleeding_not_called"] == 1 and vetoed["dice_bleeding_vetoed"] == 0.0


def test_a_zero_or_nan_map_guesses_nothing() -> None:
    true = np.zeros((2, 8, 8), bool)
    true[:, 2:6, 2:6] = True
    prob = np.zeros((2, 8, 8), np.float32)
    prob[1] = np.nan
    s = MB.summarise(prob, true, np.ones(2), cut=0.5, any_cut=0.5, fraction=0.5)
    assert [m["peak_relative_dice"] for m in s["missed"]] == [0.0, 0.0] and s["missed_rescuable"] == 0


def test_unseen_normals_keeps_known_empty_slices_of_untrained_patients() -> None:
    def case(i: str, patient: str, any_: int, polygons: tuple | None = ()) -> Case:
        return Case(id=i, labels=(any_, 0, 0, 0, 0, 0), polygons=polygons, patient_id=patient)

    cases = [case("a", "p0", 0), case("b", "p1", 0), case("c", "p9", 0), case("d", "p0", 1, None),
             case("e", "p9", 0, None), Case(id="f", labels=None, polygons=())]
    groups = [["patient:p0"], ["patient:p1"]]
    assert [c.id for c in MB.unseen_normals(cases, groups, 0)] == ["a", "c"]
    assert [c.id for c in MB.unseen_normals(cases, groups, 1)] == ["b", "c"]
    with pytest.raises(MB.MissedError, match="--fold 2 is not a fold"):
        MB.unseen_normals(cases, groups, 2)
