"""benchmarks/zero_shot_real.py: label-free false-positive figures of a run on real DICOMs."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.benchmark_modules import load_benchmark
from tests.factories import write_ct

ZS = load_benchmark("zero_shot_real")


def _head(size: int = 64) -> np.ndarray:
    """HU: air, a bone ring, brain at 35 HU inside it, a 60 HU bleed."""
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    ys, xs = np.mgrid[0:size, 0:size]
    r = np.hypot(ys - size / 2, xs - size / 2)
    hu[r < 28] = 1200.0
    hu[r < 24] = 35.0
    hu[(ys > 28) & (ys < 36) & (xs > 20) & (xs < 28)] = 60.0
    return hu


def test_mask_pixels_on_bone_or_air_are_implausible() -> None:
    hu = _head()
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[28:36, 20:28] = 255  # the bleed: its 4 x 4 core is plausible
    mask[1:6, 1:6] = 255  # air: a 1-pixel core
    fig = ZS.slice_figures(hu, mask)
    assert (fig["mask_pixels"], fig["core_pixels"], fig["implausible_pixels"]) == (89, 17, 1)
    # The bleed's edge on bone does not count: only the core is scored.
    edge = np.zeros(hu.shape, dtype=np.uint8)
    edge[27:36, 20:28] = 255
    hu_edge = hu.copy()
    hu_edge[27, 20:28] = 900.0
    assert ZS.slice_figures(hu_edge, edge)["implausible_pixels"] == 0
    assert not fig["no_brain"] and fig["brain_share"] > 0.3
    # A mask at another size is resized onto the HU grid (nearest).
    small = cv2.resize(mask, (32, 32), interpolation=cv2.INTER_NEAREST)
    assert ZS.slice_figures(hu, small)["mask_pixels"] > 0


def test_a_slice_of_bone_and_air_has_no_brain() -> None:
    hu = np.full((64, 64), -1000.0, dtype=np.float32)
    hu[20:40, 20:40] = 900.0  # a bone cap above the vertex
    hu[30, 30] = 30.0  # one noisy pixel is not brain (median filtered)
    fig = ZS.slice_figures(hu, np.zeros((64, 64), np.uint8))
    assert fig["no_brain"] and fig["mask_pixels"] == 0


def test_summary_pools_slices() -> None:
    rows = [
        {"p_any": 0.9, "decision_any": 1, "mask_pixels": 100, "core_pixels": 80, "implausible_pixels": 40,
         "no_brain": False},
        {"p_any": 0.2, "decision_any": 0, "mask_pixels": 0, "core_pixels": 0, "implausible_pixels": 0,
         "no_brain": False},
        {"p_any": 0.6, "decision_any": 1, "mask_pixels": 300, "core_pixels": 240, "implausible_pixels": 0,
         "no_brain": True},
    ]
    s = ZS.summarise(rows)
    assert (s["slices"], s["called_any"], s["slices_with_mask"]) == (3, 2, 2)
    assert s["p_any_median"] == 0.6 and s["mask_pixels_median"] == 200
    assert s["implausible_share"] == 0.125
    assert (s["no_brain_slices"], s["no_brain_with_mask"], s["no_brain_called_any"]) == (1, 1, 1)
    assert "| 0:r |" in ZS.table({"0:r": {"summary": s}})


def test_score_run_reads_predictions_against_the_dicoms(tmp_path: Path) -> None:
    hu = _head()
    dcm = write_ct(tmp_path / "dcms" / "a.dcm", hu + 1024.0)  # stored = HU - intercept (-1024)
    out = tmp_path / "predict"
    (out / "masks").mkdir(parents=True)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[28:36, 20:28] = 255
    cv2.imwrite(str(out / "masks" / "a.png"), mask)
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["id", "path", "p_any", "decision_any", "mask_png"])
        w.writeheader()
        w.writerow({"id": "a", "path": str(dcm), "p_any": 0.7, "decision_any": 1, "mask_png": "masks/a.png"})
    (row,) = ZS.score_run(out / "predictions.csv")
    assert (row["mask_pixels"], row["core_pixels"], row["implausible_pixels"], row["p_any"]) == (64, 16, 0, 0.7)
    (out / "masks" / "a.png").unlink()
    with pytest.raises(SystemExit, match="cannot read the predicted mask"):
        ZS.score_run(out / "predictions.csv")
    text = (out / "predictions.csv").read_text().replace("masks/a.png", "")
    (out / "predictions.csv").write_text(text)  # a run without a mask head writes no masks
    with pytest.raises(SystemExit, match="no mask head"):
        ZS.score_run(out / "predictions.csv")


def test_a_missing_dicom_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no DICOM folder"):
        ZS.main([str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--dicoms", str(tmp_path / "none")])


def test_contact_sheet_tiles_the_overlays_with_labels(tmp_path: Path, capsys) -> None:
    (tmp_path / "overlays").mkdir()
    red = np.zeros((64, 64, 3), dtype=np.uint8)
    red[..., 2] = 255
    # fusion-predict names files by a cleaned id: the sheet follows predictions.csv's column.
    cv2.imwrite(str(tmp_path / "overlays" / "a_1.png"), red)
    rows = [{"id": "a/1", "overlay_png": "overlays/a_1.png", "p_any": 0.7, "mask_pixels": 12, "no_brain": False},
            {"id": "b", "overlay_png": "overlays/b.png", "p_any": 0.1, "mask_pixels": 0, "no_brain": True}]
    out = ZS.contact_sheet(tmp_path, rows, tile=32, columns=3)
    assert out == tmp_path / "sheet.png"
    sheet = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert sheet.shape == (32, 96, 3)
    assert sheet[20:, :32, 2].mean() > 200 and sheet[20:, 40:, :].max() == 0  # a's red, b's black
    assert sheet[:12, 32:64].max() > 0  # b's label is written
    assert "1 of 2 overlays missing" in capsys.readouterr().err
    assert cv2.imread(str(ZS.contact_sheet(tmp_path, rows[:1] * 3, tile=32, columns=3))).shape == (32, 96, 3)
    empty = cv2.imread(str(ZS.contact_sheet(tmp_path, [], tile=32, columns=3)), cv2.IMREAD_COLOR)
    assert empty.shape == (32, 96, 3)


def test_mask_pixels_outside_a_closed_skull() -> None:
    hu = _head()
    ys, xs = np.mgrid[0:64, 0:64]
    r = np.hypot(ys - 32, xs - 32)
    hu[(r >= 28) & (r < 31)] = 50.0  # muscle on the outside of the bone, at blood HU
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[28:36, 20:28] = 255  # the bleed inside
    fig = ZS.slice_figures(hu, mask)
    assert fig["skull_closed"] and fig["outside_pixels"] == 0
    mask[30:34, 62:64] = 255  # on the muscle, outside the bone (2 px off it: the dilation)
    assert ZS.slice_figures(hu, mask)["outside_pixels"] == 8
    # A skull open to the outside (the skull base's foramina): no figure, not zero.
    hu[30:34, 52:64] = 35.0
    fig = ZS.slice_figures(hu, mask)
    assert not fig["skull_closed"] and fig["outside_pixels"] is None
    rows = [{"p_any": 0.9, "decision_any": 1, "mask_pixels": 100, "core_pixels": 0, "implausible_pixels": 0,
             "no_brain": False, "outside_pixels": 25},
            {"p_any": 0.9, "decision_any": 1, "mask_pixels": 300, "core_pixels": 0, "implausible_pixels": 0,
             "no_brain": False, "outside_pixels": 0},
            {"p_any": 0.9, "decision_any": 1, "mask_pixels": 500, "core_pixels": 0, "implausible_pixels": 0,
             "no_brain": False, "outside_pixels": None}]
    s = ZS.summarise(rows)
    assert (s["skull_closed_slices"], s["outside_share"], s["outside_slices"]) == (2, 0.0625, 1)
    # Rows scored before the figure existed: no figure, not a measured zero.
    old = ZS.summarise([{k: v for k, v in r.items() if k != "outside_pixels"} for r in rows])
    assert (old["skull_closed_slices"], old["outside_share"], old["outside_slices"]) == (0, None, None)
    assert "None" in ZS.table({"0:r": {"summary": {k: v for k, v in old.items() if k != "outside_slices"}}})
