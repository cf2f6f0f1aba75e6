"""fusion.inference + fusion.evaluate + fusion-evaluate on a tiny fake SavedModel."""
from __future__ import annotations

import csv
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from click.testing import CliRunner
from test_predict import make_fake_savedmodel  # noqa: E402  (tests/ is on sys.path)

from data_build.schema import LABEL_NAMES
from fusion import evaluate as E
from fusion import scoring
from fusion.inference import ModelLoadError, PredictInputError, load_predictor
from fusion.report import SECTIONS
from fusion.thresholds import Thresholds

S = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    make_fake_savedmodel(run / "export")
    (run / "thresholds.json").write_text(
        json.dumps({"thresholds": {n: 0.5 for n in LABEL_NAMES}}), encoding="utf-8"
    )
    (run / "config.json").write_text(json.dumps({"data": {"image_size": S}}), encoding="utf-8")
    return run


def fake_batches(n_batches: int = 3, b: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Reader-output dicts: channel 0 holds a square of intensity v (the fake model's mask)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_batches):
        image = np.zeros((b, S, S, 4), np.float32)
        mask = np.zeros((b, S, S, 1), np.float32)
        labels = np.zeros((b, 6), np.float32)
        for i in range(b):
            side = int(rng.integers(0, 12))
            image[i, 4 : 4 + side, 2 : 2 + side, 0] = 0.9
            # truth shifted by one pixel: Dice < 1 but > 0
            mask[i, 5 : 5 + side, 2 : 2 + side, 0] = 1.0
            labels[i, 0] = float(side > 6)
            labels[i, 1] = float(side > 8)
            labels[i, 2] = float(rng.random() < 0.5)
            labels[i, 3] = float(side > 9)
        area = mask.reshape(b, -1).mean(axis=1)
        out.append(
            {
                "image": image,
                "hu": np.zeros((b, S, S, 1), np.float32),
                "is_hu": np.zeros(b, np.float32),
                "labels": labels,
                "has_labels": np.ones(b, np.float32),
                "mask": mask,
                "has_mask": np.resize(np.float32([1, 1, 1, 0]), b),
                "area_fraction": area.astype(np.float32),
                "area_mm2": (area * S * S * 0.25).astype(np.float32),
                "has_area": np.resize(np.float32([1, 1, 1, 0]), b),
                "has_area_mm2": np.resize(np.float32([1, 1, 0, 0]), b),
                "pixel_spacing": np.full((b, 2), 0.5, np.float32),
                "has_spacing": np.resize(np.float32([1, 1, 0, 0]), b),
                "id": np.array([f"ID_{k}{i}".encode() for i in range(b)]),
            }
        )
    return out


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self.imgs = 0
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if tag == "img":
            self.imgs += 1
        if tag == "svg":
            self.svgs += 1
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key] or "")


def test_predictor_outputs_and_flip(model_dir: Path) -> None:
    pred = load_predictor(model_dir)
    assert pred.path == model_dir / "export" and pred.run_dir == model_dir
    assert pred.thresholds is not None and pred.image_size == S
    x = np.zeros((3, S, S, 4), np.float32)
    x[:, :, : S // 2, 0] = 1.0  # left half bright: p = 1 plain, 0.5 averaged with the flip
    out = pred.predict(x, batch_size=2)
    assert out["probabilities"].shape == (3, 6) and out["decisions"].dtype == np.int32
    assert out["mask"].shape == (3, S, S, 1) and out["area_fraction"].shape == (3,)
    np.testing.assert_allclose(out["probabilities"][:, 0], 1.0)
    tta = pred.predict(x, tta="flip")
    np.testing.assert_allclose(tta["probabilities"][:, 0], 0.5, atol=1e-6)
    # mask flipped back: equal to the un-augmented (equivariant) mask averaged with itself
    np.testing.assert_allclose(tta["mask"], out["mask"], atol=1e-6)
    hu = pred.predict_hu(np.full((2, S, S), 80.0, np.float32))
    np.testing.assert_allclose(hu["mask"], 1.0)
    with pytest.raises(PredictInputError, match=r"\[N, H, W, 4\]"):
        pred.predict(np.zeros((2, S, S, 3), np.float32))
    with pytest.raises(PredictInputError, match="predict_hu"):
        pred.predict(np.full((1, S, S, 4), 40.0, np.float32))


def test_load_predictor_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_predictor(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="saved_model.pb"):
        load_predictor(tmp_path)


def test_multi_probability() -> None:
    p = np.array([[0.5, 0.5, 0.0], [1.0, 1.0, 0.0], [0.2, 0.0, 0.0]])
    np.testing.assert_allclose(scoring.multi_probability(p), [0.25, 1.0, 0.0])


def test_classification_metrics_by_context_alone_vs_beside_another_type() -> None:
    names = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
    assert tuple(LABEL_NAMES[1:]) == names
    # types per slice (ep, iph, ivh, sah, sdh); "any" = 1 where any type is present
    types = np.array(
        [
            [0, 0, 0, 1, 0],  # 0: SAH alone
            [0, 0, 0, 1, 0],  # 1: SAH alone
            [0, 0, 0, 1, 1],  # 2: SAH + SDH
            [0, 0, 1, 1, 0],  # 3: SAH + IVH
            [0, 0, 0, 0, 1],  # 4: SDH alone
            [0, 0, 0, 0, 0],  # 5: none
            [0, 0, 0, 0, 0],  # 6: none
        ]
    )
    labels = np.concatenate([types.max(axis=1, keepdims=True), types], axis=1).astype(float)
    probs = np.full(labels.shape, 0.5)
    # SAH: alone slices rank above every negative, slices beside another type below them
    probs[:, 4] = [0.9, 0.8, 0.1, 0.2, 0.5, 0.4, 0.3]
    # SDH: the slice beside SAH ranks first; the alone slice above 4 of the 5 negatives
    probs[:, 5] = [0.1, 0.2, 0.75, 0.3, 0.35, 0.7, 0.05]
    decisions = (probs >= 0.5).astype(np.int32)
    rep = scoring.classification_metrics(labels, probs, decisions, np.full(6, 0.5), n_boot=0)
    assert {"n", "per_class", "macro", "macro_types", "multi"} <= set(rep)
    ctx = rep["by_context"]
    assert list(ctx) == list(names)  # the five types, not "any"
    sah = ctx["subarachnoid"]
    assert sah["n_neg"] == 3
    assert sah["alone"] == {"n_pos": 2, "auc": 1.0}
    assert sah["with_other"] == {"n_pos": 2, "auc": 0.0}
    # the overall SAH AUC mixes both: 6 of the 12 positive-negative pairs ranked right
    assert rep["per_class"]["subarachnoid"]["auc"] == pytest.approx(0.5)
    sdh = ctx["subdural"]
    assert sdh["n_neg"] == 5
    assert sdh["alone"]["n_pos"] == 1 and sdh["alone"]["auc"] == pytest.approx(0.8)
    assert sdh["with_other"]["n_pos"] == 1 and sdh["with_other"]["auc"] == pytest.approx(1.0)
    ivh = ctx["intraventricular"]  # only beside another type: "alone" is undefined
    assert ivh["n_neg"] == 6
    assert ivh["alone"] == {"n_pos": 0, "auc": None}
    assert ivh["with_other"]["n_pos"] == 1 and ivh["with_other"]["auc"] is not None
    for name in ("epidural", "intraparenchymal"):  # never present: both undefined
        assert ctx[name] == {
            "n_neg": 7,
            "alone": {"n_pos": 0, "auc": None},
            "with_other": {"n_pos": 0, "auc": None},
        }
    json.dumps(rep, allow_nan=False)  # plain JSON types, no NaN
    # every slice has SAH alone: no negatives, so no AUC either
    only = scoring.context_metrics(labels[:2], probs[:2])["subarachnoid"]
    assert only == {"n_neg": 0, "alone": {"n_pos": 2, "auc": None},
                    "with_other": {"n_pos": 0, "auc": None}}


def test_evaluate_writes_metrics_and_self_contained_report(
    model_dir: Path, tmp_path: Path
) -> None:
    pred = load_predictor(model_dir)
    res = E.evaluate(pred, fake_batches(), tmp_path / "rep", split="test", n_boot=30)
    m = json.loads(res.metrics_path.read_text(encoding="utf-8"))
    assert m["n_slices"] == 12
    cls = m["classification"]
    assert set(cls["per_class"]) == set(LABEL_NAMES)
    assert "multi" in cls and "macro_types" in cls
    assert set(cls["by_context"]) == set(LABEL_NAMES[1:])
    # channel 0 is 0 on the left half except the square: p_any rises with square size,
    # so the AUC of "any" (side > 6) is high
    assert cls["per_class"]["any"]["auc"] > 0.9
    assert cls["per_class"]["any"]["ci"]["auc"] is not None
    seg = m["segmentation"]
    assert seg["n"] == 9  # has_mask on 3 of 4 per batch
    assert 0.0 < seg["dice"]["mean"] <= 1.0
    assert m["area"]["fraction"]["n"] == 9 and m["area"]["mm2"]["n"] == 6
    assert m["thresholds"]["any"] == 0.5
    text = res.report_path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    assert set(SECTIONS) <= parser.ids and "by-context" in parser.ids
    assert parser.svgs >= 5 and parser.imgs >= 2
    assert all(u.startswith("data:image/png;base64,") for u in parser.urls), parser.urls
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    rows = res.predictions_path.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 13 and rows[0].startswith("id,label_any")


def test_calibration_notes_reach_the_report(model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(model_dir, run)
    note = "class 'epidural' has only 3 positive examples on this split: its threshold is rough"
    (run / "thresholds.json").write_text(
        json.dumps({"thresholds": {n: 0.5 for n in LABEL_NAMES}, "notes": [note]}),
        encoding="utf-8",
    )
    # As fusion-train's export writes it: the SavedModel's own copy has no notes.
    (run / "export" / "thresholds.json").write_text(
        json.dumps({"thresholds": {n: 0.5 for n in LABEL_NAMES}}), encoding="utf-8"
    )
    res = E.evaluate(load_predictor(run / "export"), fake_batches(2), tmp_path / "rep", n_boot=0)
    notes = json.loads(res.metrics_path.read_text())["notes"]
    assert f"threshold calibration: {note}" in notes
    assert "only 3 positive examples" in res.report_path.read_text(encoding="utf-8")


def test_evaluate_cuts_masks_at_the_runs_mask_threshold(model_dir: Path, tmp_path: Path) -> None:
    """The fake model's mask is 0.9 on its square: bleed at a 0.5 cut, nothing at 0.95."""
    before = E.evaluate(load_predictor(model_dir), fake_batches(2), tmp_path / "half", n_boot=0)
    seg = json.loads(before.metrics_path.read_text())["segmentation"]
    assert seg["mask_threshold"] == 0.5 and seg["mask_size"]["pixel_precision"] is not None
    run = tmp_path / "run"
    shutil.copytree(model_dir, run)
    (run / "thresholds.json").write_text(json.dumps(
        {"thresholds": {n: 0.5 for n in LABEL_NAMES}, "mask_threshold": 0.95}), encoding="utf-8")
    pred = load_predictor(run)
    assert pred.mask_threshold == 0.95
    res = E.evaluate(pred, fake_batches(2), tmp_path / "high", n_boot=0)
    seg = json.loads(res.metrics_path.read_text())["segmentation"]
    assert seg["mask_threshold"] == 0.95 and seg["mask_size"]["pixel_precision"] is None  # none predicted
    rows = list(csv.DictReader(res.predictions_path.read_text().splitlines()))
    assert rows and all(r["pixels_pred"] in ("0", "0.0", "") for r in rows)


def test_recounting_at_a_grid_threshold_equals_collecting_at_it(model_dir: Path) -> None:
    """`Collected.use_mask_threshold` (calibration: no second model pass) gives the figures a
    pass at that threshold gives."""
    from fusion import scoring
    from fusion.metrics import MASK_GRID

    pred = load_predictor(model_dir)
    batches = fake_batches(3)
    for k, batch in enumerate(batches):  # squares at 0.36-0.9: some above the cut, some below
        batch["image"][..., 0] *= np.linspace(0.4, 1.0, len(batch["image"]))[::1 if k % 2 else -1, None, None]
    grid = scoring.collect(pred, batches, n_overlays=0, mask_grid=MASK_GRID)
    at_half = grid.cat("pixels_pred").copy()
    grid.use_mask_threshold(0.6)
    direct = scoring.collect(pred, batches, n_overlays=0, mask_threshold=0.6)
    for name in ("pixels_both", "pixels_pred", "pixels_true", "dice", "iou", "pred_nonempty", "area_mask"):
        np.testing.assert_allclose(grid.cat(name), direct.cat(name), err_msg=name)
    assert grid.mask_threshold == direct.mask_threshold == 0.6
    assert 0 < grid.cat("pixels_pred").sum() < at_half.sum()
    with pytest.raises(ValueError, match="not in the collected mask grid"):
        grid.use_mask_threshold(0.42)


def test_evaluate_empty_split_raises(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(E.EvaluateError, match="no slice"):
        E.evaluate(load_predictor(model_dir), [], tmp_path / "x", n_boot=0)


def test_cli_evaluate(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusion.cli import evaluate as cli

    seen: dict[str, Any] = {}

    def fake_dataset(shards: Any, split: str, image_size: int, batch_size: int) -> Iterator:
        seen.update(split=split, image_size=image_size, batch_size=batch_size)
        return iter(fake_batches(2))

    monkeypatch.setattr(cli, "_load_batches", fake_dataset)
    shards = tmp_path / "shards"
    shards.mkdir()
    out = tmp_path / "rep"
    runner = CliRunner()
    args = [str(model_dir), str(shards), "--out", str(out), "--bootstrap", "10"]
    res = runner.invoke(cli.main, args)
    assert res.exit_code == 0, res.output
    assert seen == {"split": "test", "image_size": S, "batch_size": 8}
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()
    assert json.loads((out / "metrics.json").read_text())["tta"] == "flip"  # the default
    # refuses to overwrite without --overwrite
    res = runner.invoke(cli.main, args)
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert runner.invoke(cli.main, [*args, "--overwrite", "--tta", "none"]).exit_code == 0
    assert json.loads((out / "metrics.json").read_text())["tta"] == "none"
    # a missing model is a clean error, not a traceback
    res = runner.invoke(cli.main, [str(tmp_path / "nope"), str(shards), "--out", str(out / "b")])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_end_to_end_with_real_reader_and_export(tmp_path: Path) -> None:
    """fusion-synth -> fusion-build -> an untrained model exported by fusion.export ->
    fusion-evaluate and fusion-predict (checks the contracts between the modules)."""
    import dataclasses

    cli_build = pytest.importorskip("data_build.cli")
    export = pytest.importorskip("fusion.export")
    pytest.importorskip("fusion.data")
    import keras

    from fusion.cli import evaluate as cli_eval
    from fusion.cli import predict as cli_pred
    from fusion.config import preset
    from fusion.model import build_model

    runner = CliRunner()
    drop, shards, run = tmp_path / "drop", tmp_path / "shards", tmp_path / "run"
    res = runner.invoke(cli_build.synth, [str(drop), "--patients", "5", "--slices-per-patient",
                                          "2", "--size", "64", "--no-progress", "--no-broken"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli_build.build, [str(drop), "--out", str(shards), "--workers", "1",
                                          "--split-fractions", "0.4,0.2,0.4", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = preset("demo")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_size=32, width=4))
    keras.utils.set_random_seed(0)
    thresholds = Thresholds.from_array([0.5] * len(LABEL_NAMES))
    export.write_savedmodel(build_model(cfg.model), run / "export", 32, thresholds, None)
    (run / "config.json").write_text(cfg.to_json())
    assert load_predictor(run).image_size == 32
    res = runner.invoke(cli_eval.main, [str(run), str(shards), "--out", str(tmp_path / "rep"),
                                        "--bootstrap", "5"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    manifest = json.loads((shards / "manifest.json").read_text())
    assert m["n_slices"] == manifest["counts"]["test"]["slices"] > 0
    res = runner.invoke(cli_pred.main, [str(run), str(drop / "dcms"), str(drop / "renders"),
                                        "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    series = json.loads((tmp_path / "pred" / "series.json").read_text())
    dicom_series = [s for s in series if s["source"] == "dicom"]
    assert dicom_series and all(s["volume_ml"] is not None for s in dicom_series)
    assert any(s["source"] == "render" for s in series)


def test_cli_evaluate_bad_shards_is_a_clean_error(model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("fusion.data")
    from fusion.cli import evaluate as cli

    shards = tmp_path / "shards"
    shards.mkdir()  # no manifest.json
    res = CliRunner().invoke(cli.main, [str(model_dir), str(shards), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "Error:" in res.output and "manifest" in res.output.lower()
    assert res.exception is None or isinstance(res.exception, SystemExit)
