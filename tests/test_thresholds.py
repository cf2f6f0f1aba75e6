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
