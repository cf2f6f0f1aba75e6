"""benchmarks/proxy_benchmark.py: slice selection, folds by patient, sub-drops, the readers of
the commands' outputs, aggregation over folds and the table. Nothing here trains."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_build.drop import discover
from data_build.synth.writer import write_synthetic_drop
from tests.benchmark_modules import load_benchmark

PB = load_benchmark("proxy_benchmark")


@pytest.fixture(scope="module")
def drop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proxy") / "drop"
    write_synthetic_drop(root, n_patients=9, slices_per_patient=4, size=32, seed=3, broken=False)
    return root


def test_select_keeps_bleeding_slices_with_polygons_and_counts_the_rest(drop_root: Path) -> None:
    drop = discover(drop_root)
    kept, left_out = PB.select_slices(drop.cases)
    by_id = {c.id: c for c in drop.cases}
    assert kept, "the synthetic drop has bleeding slices with polygons"
    assert all(by_id[s.id].labels[0] == 1 and by_id[s.id].polygons for s in kept)
    assert all(s.group == by_id[s.id].group for s in kept)
    assert len(kept) + sum(left_out.values()) == len(drop.cases)
    assert left_out["not bleeding (any = 0)"] > 0  # the "normal" patients


def _slices(sizes: dict[str, int]) -> list[Any]:
    return [PB.Selected(f"ID_{g}_{i}", g) for g, n in sizes.items() for i in range(n)]


SIZES = {f"patient:P{i:02d}": 1 + (i * 7) % 5 for i in range(23)}


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_folds_are_disjoint_cover_every_patient_and_are_balanced(k: int) -> None:
    folds = PB.assign_folds(SIZES, k)
    assert set(folds) == set(SIZES)  # every patient, each in exactly one fold (a dict)
    assert set(folds.values()) == set(range(k))
    members = PB.fold_members(_slices(SIZES), folds, k)
    all_ids = [i for m in members for i in m]
    assert len(all_ids) == len(set(all_ids)) == sum(SIZES.values())
    for m in members:  # no patient's slices in two folds
        assert {i.rsplit("_", 1)[0] for i in m}.isdisjoint(
            {i.rsplit("_", 1)[0] for other in members if other is not m for i in other})
    totals = [len(m) for m in members]
    assert max(totals) - min(totals) <= max(SIZES.values())


def test_folds_do_not_depend_on_input_order() -> None:
    reversed_sizes = dict(reversed(list(SIZES.items())))
    assert PB.assign_folds(SIZES, 4) == PB.assign_folds(reversed_sizes, 4)


def test_folds_refuse_too_few_patients_or_folds() -> None:
    with pytest.raises(PB.ProxyError, match="3 patients cannot fill 4 folds"):
        PB.assign_folds({"a": 1, "b": 2, "c": 3}, 4)
    with pytest.raises(PB.ProxyError, match="at least 2"):
        PB.assign_folds(SIZES, 1)


def test_limit_to_target_takes_whole_patients_until_the_target() -> None:
    slices = _slices(SIZES)
    kept = PB.limit_to_target(slices, 30)
    kept_sizes = PB.group_sizes(kept)
    assert all(kept_sizes[g] == SIZES[g] for g in kept_sizes)  # whole patients only
    assert sum(kept_sizes.values()) >= 30
    # minimal: the last patient taken was needed to reach the target
    assert sum(kept_sizes.values()) - max(kept_sizes.values()) < 30 + max(SIZES.values())
    assert PB.limit_to_target(slices, 0) == slices
    assert PB.limit_to_target(slices, 10_000) == slices


def test_subdrop_holds_exactly_the_chosen_slices_as_links(drop_root: Path, tmp_path: Path) -> None:
    drop = discover(drop_root)
    kept, _ = PB.select_slices(drop.cases)
    by_id = {c.id: c for c in drop.cases}
    chosen = [by_id[s.id] for s in kept[:3]]
    PB.write_subdrop(drop_root, chosen, tmp_path / "sub")
    sub = discover(tmp_path / "sub")
    assert [c.id for c in sub.cases] == sorted(c.id for c in chosen)
    for case in sub.cases:  # labels, polygons and patient survive the links
        original = by_id[case.id]
        assert (case.labels, case.polygons, case.patient_id) == (
            original.labels, original.polygons, original.patient_id)
    assert all(p.is_symlink() for p in (tmp_path / "sub" / "renders").rglob("*.jpg"))
    assert not list(tmp_path.glob(".sub.partial"))


def _cell(preset: str, seed: int, fold: int, dice: float, n: int, empty: int,
          labels: list[list[int]], probs: list[list[float]], seconds: float = 90.0) -> dict:
    evaluation = PB.Evaluation(n_slices=n, dice_mean=dice, n_bleeding=n, n_empty=empty,
                               labels=labels, probabilities=probs)
    return {"preset": preset, "seed": seed, "fold": fold, "train_seconds": seconds,
            "evaluation": PB.dataclasses.asdict(evaluation),
            "history": {"epoch": [0.0, 1.0, 2.0], "loss": [3.0, 2.0, 1.5],
                        "epoch_seconds": [40.0, seconds / 10, seconds / 10 + 2],
                        "mask_loss": [2.3, 2.0, 1.6], "val_loss": [3.1, None, 2.2]}}


def _row(epidural: int, parenchymal: int) -> list[int]:
    return [epidural, parenchymal, 0, 0, 0]


def _p(epidural: float, parenchymal: float) -> list[float]:
    return [epidural, parenchymal, 0.5, 0.5, 0.5]


def _cells() -> list[dict]:
    # Epidural pooled: positives 0.9, 0.3; negatives 0.1, 0.2, 0.4 -> (3 + 2) / 6.
    # Intraparenchymal pooled: positives 0.6, 0.5; negatives 0.2, 0.7, 0.1 -> (2 + 2) / 6.
    # The other three types have no positive: undefined, left out of the macro mean.
    fold0 = _cell("fusion", 0, 0, 0.5, 2, 1, [_row(1, 0), _row(0, 1)], [_p(0.9, 0.2), _p(0.1, 0.6)])
    fold1 = _cell("fusion", 0, 1, 0.8, 3, 0, [_row(1, 0), _row(0, 0), _row(0, 1)],
                  [_p(0.3, 0.7), _p(0.2, 0.1), _p(0.4, 0.5)], seconds=150.0)
    return [fold1, fold0]


def test_aggregate_pools_slices_over_folds() -> None:
    (row,) = PB.aggregate(_cells())
    assert row.folds == [0, 1]
    assert row.dice_per_fold == [0.5, 0.8]
    assert row.dice == pytest.approx((0.5 * 2 + 0.8 * 3) / 5)  # per slice, not per fold
    assert row.auc_per_type["epidural"] == pytest.approx(5 / 6)
    assert row.auc_per_type["intraparenchymal"] == pytest.approx(4 / 6)
    assert row.auc_per_type["subdural"] is None
    assert row.macro_auc == pytest.approx((5 / 6 + 4 / 6) / 2)
    assert (row.n_empty, row.n_bleeding, row.worst_fold_empty) == (1, 5, 0.5)
    assert row.train_seconds == [90.0, 150.0]
    assert row.epoch_seconds == [10.0, 16.0]  # median of each fold's epochs after the first


def test_steady_epoch_time_leaves_out_the_first_epoch_and_old_histories() -> None:
    assert PB.steady_epoch_seconds({"epoch_seconds": [30.0, 5.0, 7.0, 6.0]}) == 6.0
    assert PB.steady_epoch_seconds({"epoch_seconds": [30.0]}) is None
    assert PB.steady_epoch_seconds({"loss": [1.0, 0.5]}) is None  # a history from before the column


def test_seed_means_and_table() -> None:
    other_seed = [dict(c, seed=1) for c in _cells()]
    other_seed[0]["evaluation"] = dict(other_seed[0]["evaluation"], dice_mean=0.3)
    rows = PB.aggregate(_cells() + other_seed)
    (mean,) = PB.seed_means(rows)
    assert mean.seed == "mean of 2"
    assert mean.dice == pytest.approx((0.68 + (0.5 * 2 + 0.3 * 3) / 5) / 2)
    assert (mean.n_empty, mean.n_bleeding) == (2, 10)
    table = PB.markdown_table(rows + [mean])
    lines = table.splitlines()
    assert lines[0].startswith("| preset | seed | mean Dice (per fold) | macro AUC")
    assert "| `fusion` | 0 | 0.680 (0.500 / 0.800) | 0.750 | 1 of 5 (50%) | 2.0 min | 13.0 |" in lines
    assert lines[-1].startswith("| `fusion` | mean of 2 | 0.")
    assert len(lines) == 2 + 3


def test_loss_table_and_curves_csv() -> None:
    table = PB.loss_table(_cells())
    assert "| `fusion` | 0 | 0 | 3 | 3.000 / 2.000 / 1.500 | 2.300 -> 1.600 | 2.200 |" in table
    assert PB._curve_points([float(v) for v in range(9)]) == [0.0, 2.0, 4.0, 6.0, 8.0]
    text = PB.loss_curves_csv(_cells())
    lines = text.splitlines()
    assert lines[0] == "preset,seed,fold,epoch,epoch_seconds,loss,mask_loss,val_loss"
    assert lines[1] == "fusion,0,0,1,40.0,3.0,2.3,3.1" and lines[2] == "fusion,0,0,2,9.0,2.0,2.0,"
    assert len(lines) == 1 + 6


def test_read_history_turns_blanks_into_none(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,2.5,nan\n1,1.5,1.2\n", encoding="utf-8")
    assert PB.read_history(path) == {"epoch": [0.0, 1.0], "loss": [2.5, 1.5], "val_loss": [None, 1.2]}
    assert PB.read_history(tmp_path / "missing.csv") == {}


def test_read_evaluation_reads_what_fusion_evaluate_writes(tmp_path: Path) -> None:
    """Contract test: the one reader of metrics.json / predictions.csv against the real writer."""
    from fusion import evaluate as E

    c = E.Collected(ids=["ID_a", "ID_b", "ID_c"])
    c.labels.append(np.array([[1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]], float))
    c.has_labels.append(np.array([True, True, True]))
    c.probabilities.append(np.full((3, 6), 0.25))
    c.decisions.append(np.zeros((3, 6), np.int32))
    for name, values in {"area_pred": [0.1, 0.2, 0.3], "area_mask": [0.1, 0.0, 0.3],
                         "area_true": [0.1, 0.2, 0.3], "mm2_per_fraction": [1.0, 1.0, 1.0],
                         "area_mm2_true": [0.0, 0.0, 0.0], "dice": [0.5, 0.0, 0.9],
                         "iou": [0.3, 0.0, 0.8]}.items():
        getattr(c, name).append(np.array(values, float))
    for name, values in {"has_area": [1, 1, 1], "has_area_mm2": [0, 0, 0], "has_mask": [1, 1, 1],
                         "mask_predicted": [1, 1, 1], "true_nonempty": [1, 1, 1],
                         "pred_nonempty": [1, 0, 1]}.items():
        getattr(c, name).append(np.array(values, bool))
    for name, values in {"pixels_true": [4, 6, 5], "pixels_pred": [8, 0, 5],
                         "pixels_both": [3, 0, 5]}.items():
        getattr(c, name).append(np.array(values, float))
    metrics, plots = E.compute_metrics(c, np.full(6, 0.5), n_boot=0)
    E.write_outputs(tmp_path, {**metrics, "thresholds": {}}, plots, c)
    got = PB.read_evaluation(tmp_path)
    assert (got.n_slices, got.n_bleeding, got.n_empty) == (3, 3, 1)
    assert got.dice_mean == pytest.approx(1.4 / 3)
    assert got.labels == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 1]]
    assert all(math.isclose(p, 0.25) for row in got.probabilities for p in row)
    assert PB.read_slice_pixels(tmp_path) == {"ID_a": (4, 8, 3), "ID_b": (6, 0, 0), "ID_c": (5, 5, 5)}


def test_read_evaluation_names_the_folder_when_unreadable(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"n_slices": 3}), encoding="utf-8")
    with pytest.raises(PB.ProxyError, match=f"fusion-evaluate output in {tmp_path}"):
        PB.read_evaluation(tmp_path)


def test_protocol_change_is_refused(tmp_path: Path) -> None:
    PB.check_protocol(tmp_path, {"epochs": 40, "image_size": 256})
    PB.check_protocol(tmp_path, {"epochs": 40, "image_size": 256})  # same: resume
    with pytest.raises(PB.ProxyError, match="epochs: 40 then, 12 now"):
        PB.check_protocol(tmp_path, {"epochs": 12, "image_size": 256})


def test_a_protocol_from_before_tta_was_evaluated_without_it(tmp_path: Path) -> None:
    PB.check_protocol(tmp_path, {"epochs": 40})  # recorded before --tta existed
    PB.check_protocol(tmp_path, {"epochs": 40, "evaluate_tta": "none"})
    with pytest.raises(PB.ProxyError, match="evaluate_tta: 'none' then, 'flip' now"):
        PB.check_protocol(tmp_path, {"epochs": 40, "evaluate_tta": "flip"})
    assert PB.parse_args(["--out", "x"]).tta == "flip"  # fusion-evaluate's default


def test_quick_defaults_and_explicit_options() -> None:
    quick = PB.parse_args(["--out", "x", "--quick"])
    assert (quick.image_size, quick.epochs, quick.only_fold) == (128, 12, 0)
    assert quick.preset_list == ["fusion", "peer-unet"] and quick.seed_list == [0, 1]
    mixed = PB.parse_args(["--out", "x", "--quick", "--epochs", "20", "--seeds", "3,4,5"])
    assert (mixed.image_size, mixed.epochs, mixed.seed_list) == (128, 20, [3, 4, 5])
    full = PB.parse_args(["--out", "x"])
    assert (full.image_size, full.epochs, full.only_fold, full.folds) == (256, 40, None, 4)


def test_bad_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert PB.main(["--out", str(tmp_path), "--presets", "fusion,nope"]) == 1
    assert "unknown preset(s) nope in --presets" in capsys.readouterr().err
    assert PB.main(["--out", str(tmp_path), "--only-fold", "4"]) == 1
    assert "--only-fold 4 is not a fold of 0..3" in capsys.readouterr().err
    assert PB.main(["--out", str(tmp_path), "--seeds", "0,x"]) == 1
    assert "expected a comma-separated list" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"norm": "layer"}}')
    assert PB.main(["--out", str(tmp_path), "--presets", f"fusion,bn={bad}"]) == 1
    assert "--presets bn=" in (err := capsys.readouterr().err) and "model.norm must be one of" in err
    assert PB.main(["--out", str(tmp_path), "--presets", f"fusion={bad}"]) == 1
    assert "not like a preset" in capsys.readouterr().err


def test_a_candidate_config_trains_with_fusion_train_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusion.config import preset

    path = tmp_path / "bn.json"
    preset("fusion").replace(model={"norm": "batch"}).save(path)
    args = PB.parse_args(["--out", str(tmp_path), "--presets", f"fusion,fusion-bn={path}"])
    PB.check_args(args)
    assert args.preset_list == ["fusion", "fusion-bn"] and args.configs == {"fusion-bn": path}
    commands: list[list[str]] = []
    monkeypatch.setattr(PB, "run_command", lambda cmd, log: commands.append(cmd) or 1.0)
    monkeypatch.setattr(PB, "read_evaluation", lambda folder: (_ for _ in ()).throw(RuntimeError("stop")))
    for name in ("fusion", "fusion-bn"):
        with pytest.raises(RuntimeError, match="stop"):
            PB.run_cell(tmp_path, name, 0, 0, (tmp_path / "a", tmp_path / "b"), 23, args)
    assert commands[0][commands[0].index("--preset") + 1] == "fusion" and "--config" not in commands[0]
    assert ["--config", str(path)] == commands[2][commands[2].index("--config"):][:2]
    assert "--preset" not in commands[2]


def test_recalibrate_cell_keeps_the_first_evaluation_and_runs_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cell = PB.cell_dir(tmp_path, "fusion", 0, 1)
    (cell / "eval").mkdir(parents=True)
    (cell / "eval" / "first").write_text("at 0.5")
    before = {"preset": "fusion", "seed": 0, "fold": 1, "evaluation": {"dice_mean": 0.5}}
    (cell / PB.RESULT_FILE).write_text(json.dumps(before))
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], log: Path) -> float:
        commands.append(cmd)
        if cmd[0] == "fusion-evaluate":
            Path(cmd[cmd.index("--out") + 1]).mkdir()
        return 1.0

    monkeypatch.setattr(PB, "run_command", fake_run)
    monkeypatch.setattr(PB, "read_evaluation", lambda folder: PB.Evaluation(23, 0.6, 23, 0, [], []))
    monkeypatch.setattr(PB, "read_mask_threshold", lambda folder: 0.7)
    shards = (tmp_path / "train-shards", tmp_path / "test-shards")
    result = PB.recalibrate_cell(tmp_path, "fusion", 0, 1, shards, "flip")
    assert commands[0] == ["fusion-train", str(shards[0]), "--out", str(cell / "run"), "--export-only",
                           "--recalibrate"]
    assert commands[1][:3] == ["fusion-evaluate", str(cell / "run"), str(shards[1])]
    assert result["evaluation_at_0.5"] == {"dice_mean": 0.5} and result["evaluation"]["dice_mean"] == 0.6
    assert result["mask_threshold"] == 0.7
    assert (cell / PB.EVAL_AT_HALF / "first").read_text() == "at 0.5" and (cell / "eval").is_dir()
    assert json.loads((cell / PB.RESULT_FILE).read_text()) == result
    assert PB.recalibrate_cell(tmp_path, "fusion", 0, 1, shards, "flip") == result and len(commands) == 2


@pytest.mark.parametrize("supported, asked, expected", [
    (True, None, "real"), (True, "easy", "easy"), (False, None, None),
])
def test_difficulty_is_passed_to_fusion_synth_when_it_has_the_option(
    supported: bool, asked: str | None, expected: str | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(PB, "synth_supports_difficulty", lambda: supported)
    calls: list[list[str]] = []
    monkeypatch.setattr(PB, "run_command", lambda args, log: calls.append(list(args)) or 0.0)
    args = PB.parse_args(["--out", str(tmp_path)] + (["--difficulty", asked] if asked else []))
    args.difficulty_used = PB.resolve_difficulty(args)
    assert args.difficulty_used == expected
    PB.write_drop(tmp_path, args)
    (command,) = calls
    assert command[:2] == ["fusion-synth", str(tmp_path / "drop")]
    assert ("--difficulty" in command) == (expected is not None)
    if expected:
        assert command[command.index("--difficulty") + 1] == expected


def test_difficulty_asked_of_a_synth_without_it_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PB, "synth_supports_difficulty", lambda: False)
    args = PB.parse_args(["--out", str(tmp_path), "--difficulty", "real"])
    with pytest.raises(PB.ProxyError, match="this fusion-synth has no --difficulty option"):
        PB.resolve_difficulty(args)


def _group_labels() -> dict[str, list[tuple[int, ...]]]:
    """21 patients of 2-4 bleeding slices, three per type plus six with several types."""
    out: dict[str, list[tuple[int, ...]]] = {}
    for i in range(21):
        types = [0, 0, 0, 0, 0]
        if i < 15:
            types[i % 5] = 1
        else:
            types[0] = types[(i % 4) + 1] = 1
        out[f"patient:P{i:02d}"] = [(1, *types)] * (2 + i % 3)
    return out


def test_val_fraction_is_chosen_by_the_builders_own_rule() -> None:
    from data_build import splits

    groups = _group_labels()
    n = sum(len(v) for v in groups.values())
    fraction, n_val = PB.choose_val_fraction(groups, 0.15)
    assigned = splits.assign_groups(groups, (1 - fraction, fraction, 0.0))
    assert n_val == sum(len(groups[g]) for g, s in assigned.items() if s == "val") > 0
    nominal = splits.assign_groups(groups, (0.85, 0.15, 0.0))
    n_nominal = sum(len(groups[g]) for g, s in nominal.items() if s == "val")
    assert abs(n_val - 0.15 * n) <= abs(n_nominal - 0.15 * n)
    assert abs(n_val - 0.15 * n) <= max(len(v) for v in groups.values())


def test_val_fraction_needs_two_patients() -> None:
    with pytest.raises(PB.ProxyError, match="cannot be split into train and val"):
        PB.choose_val_fraction({"patient:A": [(1, 1, 0, 0, 0, 0)] * 4}, 0.15)


def test_out_inside_the_drop_is_refused(drop_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert PB.main(["--out", str(drop_root / "bench"), "--drop", str(drop_root)]) == 1
    assert "lies inside --drop" in capsys.readouterr().err
    assert not (drop_root / "bench").exists()


def _write_slice_dice(folder: Path, dice: dict[str, float | None]) -> None:
    folder.mkdir(parents=True)
    lines = ["id,has_mask,dice"] + [f"{k},{0 if v is None else 1},{'' if v is None else v}" for k, v in dice.items()]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_contrast_table_pools_seeds_and_folds_per_band(tmp_path: Path) -> None:
    cells = [{"preset": "fusion", "seed": s, "fold": f} for s in (0, 1) for f in (0, 1)]
    for cell, dice in zip(cells, ({"a": 0.0, "b": 0.5}, {"c": 0.9}, {"a": 0.2, "b": 0.7}, {"c": 0.8, "d": None})):
        _write_slice_dice(PB.cell_dir(tmp_path, cell["preset"], cell["seed"], cell["fold"]) / "eval", dice)
    contrast = {"a": 3.0, "b": 8.0, "c": 30.0, "d": 12.0}  # 8.0 falls in [8, 16)
    table = PB.contrast_table(tmp_path, cells, contrast).splitlines()
    assert table[0] == ("| preset | Dice, contrast < 8 HU (slices) | Dice, contrast 8-16 HU (slices) "
                        "| Dice, contrast 16-24 HU (slices) | Dice, contrast >= 24 HU (slices) |")
    assert table[2] == "| `fusion` | 0.100 (2) | 0.600 (2) | - (0) | 0.850 (2) |"  # d: no mask
    assert PB.contrast_table(tmp_path, cells, {}) == ""  # a --drop of real slices: no table


def test_mask_size_table_pools_pixels_and_names_cells_evaluated_before_them(tmp_path: Path) -> None:
    cells = [{"preset": "fusion", "seed": 0, "fold": f} for f in (0, 1)] + [
        {"preset": "old", "seed": 0, "fold": 0}]
    header = "id,has_mask,pixels_true,pixels_pred,pixels_both"
    rows = {0: ["a,1,10,40,8", "b,1,10,10,10", "n,0,,,"], 1: ["c,1,20,0,0", "z,1,0,3,0"]}
    for fold, lines in rows.items():
        folder = PB.cell_dir(tmp_path, "fusion", 0, fold) / "eval"
        folder.mkdir(parents=True)
        (folder / "predictions.csv").write_text("\n".join([header, *lines]) + "\n")
        seg = {"segmentation": {"mask_threshold": 0.65}} if fold else {"segmentation": {}}  # fold 0: older
        (folder / "metrics.json").write_text(json.dumps(seg))
    _write_slice_dice(PB.cell_dir(tmp_path, "old", 0, 0) / "eval", {"a": 0.5})  # no pixel columns
    table = PB.mask_size_table(tmp_path, cells).splitlines()
    # precision 18 / 53, recall 18 / 40; ratios over bleeding slices 4, 1, 0 (z has no bleed)
    assert table[2] == "| `fusion` | 0.34 | 0.45 | 1.00 | 1 of 3 | 4 | 0.50, 0.65 |"
    assert table[3] == "(`old`: 1 cells evaluated before the pixel columns; rerun fusion-evaluate)"
    assert PB.mask_size_table(tmp_path, cells[2:]) == ""


def test_slice_contrasts_measure_the_phantom_once_and_only_for_the_own_drop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_build.synth import writer

    args = PB.parse_args(["--out", str(tmp_path), "--patients", "3", "--slices-per-patient", "3",
                          "--synth-size", "64", "--synth-seed", "5"])
    args.difficulty_used = "real"
    cases = list(writer.iter_synthetic_slices(3, 3, 64, 5, difficulty="real"))
    bleeding = [c for c in cases if c.slice.mask.any()]
    assert bleeding
    ids = [c.id for c in cases]
    found = PB.slice_contrasts(tmp_path, args, ids)
    assert set(found) == set(ids)
    assert {k for k, v in found.items() if v is not None} == {c.id for c in bleeding}  # normal: None
    assert all(-100.0 < v < 150.0 for v in found.values() if v is not None)
    monkeypatch.setattr(writer, "iter_synthetic_slices", lambda *a, **k: pytest.fail("redrawn"))
    assert PB.slice_contrasts(tmp_path, args, ids) == found  # cached
    args.drop = tmp_path / "real-drop"
    assert PB.slice_contrasts(tmp_path, args, ids) == {}
