"""thresholds.json: one writer and one reader, the mask threshold included."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_build.schema import LABEL_NAMES
from fusion.inference import read_thresholds
from fusion.thresholds import THRESHOLDS_FILE, Thresholds, ThresholdsError


def test_round_trip_keeps_the_mask_threshold_and_its_curve(tmp_path: Path) -> None:
    saved = Thresholds.from_array([0.4] * 6, ["a note"], mask=0.65, mask_curve={"0.50": 0.7, "0.65": 0.8})
    saved.save(tmp_path)
    data = json.loads((tmp_path / THRESHOLDS_FILE).read_text())
    assert data["mask_threshold"] == 0.65 and data["mask_dice_by_threshold"] == {"0.50": 0.7, "0.65": 0.8}
    assert "best mean per-slice Dice" in data["mask_rule"]
    assert Thresholds.load(tmp_path) == saved
    values, notes, mask = read_thresholds([tmp_path / "absent.json", tmp_path / THRESHOLDS_FILE])
    assert list(values) == [0.4] * 6 and notes == ["a note"] and mask == 0.65


def test_a_file_from_before_mask_calibration_reads_as_half(tmp_path: Path) -> None:
    (tmp_path / THRESHOLDS_FILE).write_text(json.dumps({"thresholds": {n: 0.3 for n in LABEL_NAMES}}))
    loaded = Thresholds.load(tmp_path)
    assert loaded.mask == 0.5 and loaded.mask_curve == ()
    assert loaded.to_dict()["mask_rule"].startswith("fixed at 0.5")
    assert read_thresholds([tmp_path / THRESHOLDS_FILE])[2] == 0.5
    assert read_thresholds([tmp_path / "absent.json"]) == (None, [], 0.5)


def test_a_file_keeps_the_rule_its_cut_was_chosen_by(tmp_path: Path) -> None:
    """A run calibrated before the empty-mask guard still says so after a re-save (an export)."""
    old_rule = "best mean per-slice Dice over thresholds 0.30-0.90 (ties within 0.005: the one nearest 0.5)"
    (tmp_path / THRESHOLDS_FILE).write_text(json.dumps({
        "thresholds": {n: 0.3 for n in LABEL_NAMES}, "mask_threshold": 0.8,
        "mask_dice_by_threshold": {"0.50": 0.5, "0.80": 0.6}, "mask_rule": old_rule}))
    (tmp_path / "export").mkdir()
    Thresholds.load(tmp_path).save(tmp_path / "export")
    assert json.loads((tmp_path / "export" / THRESHOLDS_FILE).read_text())["mask_rule"] == old_rule
    fresh = Thresholds.from_array([0.4] * 6, mask=0.6, mask_curve={"0.60": 0.7}).to_dict()
    assert "no more bleeding slices empty than 0.5" in fresh["mask_rule"]


@pytest.mark.parametrize("bad", [1.5, 0.0, "0.6", True, None])
def test_a_bad_mask_threshold_names_the_file(tmp_path: Path, bad: object) -> None:
    path = tmp_path / THRESHOLDS_FILE
    path.write_text(json.dumps({"thresholds": {n: 0.3 for n in LABEL_NAMES}, "mask_threshold": bad}))
    with pytest.raises(ThresholdsError, match=f"{THRESHOLDS_FILE}: mask_threshold must be a number"):
        Thresholds.load(path)


def test_a_bad_curve_is_refused(tmp_path: Path) -> None:
    path = tmp_path / THRESHOLDS_FILE
    path.write_text(json.dumps({"thresholds": {n: 0.3 for n in LABEL_NAMES},
                                "mask_dice_by_threshold": ["0.5"]}))
    with pytest.raises(ThresholdsError, match="mask_dice_by_threshold must map"):
        Thresholds.load(path)
