"""Training: target packing, loss goes down, resume after a kill, the fusion-train CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from data_build import schema, windows
from data_build.manifest import Manifest, ShardEntry, SplitCounts
from fusion import scoring
from fusion.cli.train import main
from fusion.config import RunConfig, preset
from fusion.data import to_model_io
from fusion.model import build_model
from fusion.optim import compile_model
from fusion.train import fit

S = 32
TINY = {"image_size": S, "width": 4, "depth": 2, "fusion_width": 4, "groups": 2}
#: Smallest model for tests of the training loop itself (tracing time dominates them).
LOOP = {**TINY, "fusion": "early", "depth": 1}


# --- tiny data -------------------------------------------------------------------------------


def synthetic_example(i: int, rng: np.random.Generator) -> dict[str, Any]:
    """One render-like slice: a bright blob (bleed) on noise for odd i, a normal slice else."""
    image = rng.normal(0.3, 0.05, (S, S)).clip(0, 1)
    mask = np.zeros((S, S), np.float32)
    labels = np.zeros(6, np.float32)
    if i % 2:
        r, c = rng.integers(6, S - 10, 2)
        mask[r : r + 6, c : c + 6] = 1.0
        image = np.where(mask > 0, 0.9, image)
        labels[0] = labels[1 + i % 5] = 1.0
    return {"image": image.astype(np.float32), "mask": mask, "labels": labels}


def batch_of(examples: list[dict[str, Any]], has_mask: list[float]) -> dict[str, tf.Tensor]:
    image = np.stack([np.repeat(e["image"][..., None], 4, -1) for e in examples])
    mask = np.stack([e["mask"][..., None] for e in examples])
    b = len(examples)
    return {
        "image": tf.constant(image), "hu": tf.zeros([b, S, S, 1]), "is_hu": tf.zeros([b]),
        "labels": tf.constant(np.stack([e["labels"] for e in examples])), "has_labels": tf.ones([b]),
        "mask": tf.constant(mask), "has_mask": tf.constant(has_mask, tf.float32),
        "area_fraction": tf.constant(mask.mean(axis=(1, 2, 3))), "has_area": tf.constant(has_mask, tf.float32),
    }


def xy_dataset(n_batches: int = 3, b: int = 4, seed: int = 0) -> tf.data.Dataset:
    """(image, packed targets) batches; every 3rd slice of a batch has an unknown mask."""
    rng = np.random.default_rng(seed)
    n = n_batches * b
    batch = batch_of([synthetic_example(i, rng) for i in range(n)], [0.0 if i % 4 == 2 else 1.0 for i in range(n)])
    image, y = to_model_io(batch, ("class", "area", "mask"))
    return tf.data.Dataset.from_tensor_slices((image, y)).batch(b)


def write_shards(folder: Path, n_train: int = 16, n_val: int = 8, seed: int = 0) -> Path:
    """Tiny render shards in the fusion-build layout (records from `schema.encode_example`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards, counts = [], {}
    for split, n in (("train", n_train), ("val", n_val), ("test", 0)):
        name = f"{split}-00000-of-00001.tfrecord"
        with tf.io.TFRecordWriter(str(folder / name)) as writer:
            for i in range(n):
                ex = synthetic_example(i, rng)
                pixels = windows.to_uint8(ex["image"])
                jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                mask_png = cv2.imencode(".png", (ex["mask"] * 255).astype(np.uint8))[1].tobytes()
                known = i % 4 != 2  # every 4th slice: mask unknown
                values = {
                    "id": f"ID_{split}{i:03d}", "source": "render", "height": S, "width": S,
                    **{schema.image_key(w): jpeg for w in windows.WINDOW_NAMES},
                    "labels": ex["labels"].astype(int).tolist(), "has_labels": 1,
                    "mask": mask_png if known else b"", "has_mask": int(known),
                    "area_pixels": float(ex["mask"].sum()) if known else 0.0, "has_area": int(known),
                }
                writer.write(schema.encode_example(values))
        shards.append(ShardEntry(name, split, n))
        counts[split] = SplitCounts(slices=n, with_mask=sum(1 for i in range(n) if i % 4 != 2))
    Manifest(
        schema_version=schema.SCHEMA_VERSION, source="render",
        presets=tuple(windows.PRESETS[n] for n in windows.WINDOW_NAMES), counts=counts,
        shards=tuple(shards), image_size=(S, S),
    ).save(folder)
    return folder


# --- tests -----------------------------------------------------------------------------------


def test_targets_are_packed_with_presence_flags() -> None:
    rng = np.random.default_rng(0)
    batch = batch_of([synthetic_example(1, rng), synthetic_example(2, rng)], [1.0, 0.0])
    image, y = to_model_io(batch, ("class", "area", "mask"))
    assert image.shape == (2, S, S, 4)
    assert y["class"].shape == (2, 7) and np.all(y["class"].numpy()[:, 6] == 1)
    np.testing.assert_allclose(y["area"].numpy()[:, 1], [1, 0])
    np.testing.assert_allclose(y["area"].numpy()[0, 0], np.log1p(batch["area_fraction"].numpy()[0] * 1e3), rtol=1e-6)
    assert y["mask"].shape == (2, S, S, 2)
    assert np.all(y["mask"].numpy()[0, ..., 1] == 1) and np.all(y["mask"].numpy()[1, ..., 1] == 0)
    _, only = to_model_io(batch, ("class",))
    assert set(only) == {"class"}


def test_a_few_steps_lower_the_loss() -> None:
    keras.utils.set_random_seed(0)
    cfg = RunConfig().replace(model=LOOP, train={"epochs": 5, "learning_rate": 3e-3, "warmup_epochs": 0})
    model = compile_model(build_model(cfg.model), cfg, steps_per_epoch=3)
    ds = xy_dataset()
    before = model.evaluate(ds, verbose=0, return_dict=True)
    model.fit(ds, epochs=5, verbose=0)
    after = model.evaluate(ds, verbose=0, return_dict=True)
    assert after["loss"] < 0.8 * before["loss"]
    for head in ("class_loss", "mask_loss", "area_loss"):
        assert after[head] < before[head], head


class Interrupt(keras.callbacks.Callback):
    """Simulates a kill at the end of an epoch (after the backup was written)."""

    def __init__(self, at_epoch: int) -> None:
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_fit_resumes_from_backup(tmp_path: Path) -> None:
    cfg = RunConfig().replace(model=LOOP, train={"epochs": 3, "patience": 0, "warmup_epochs": 0})
    keras.utils.set_random_seed(0)
    first = compile_model(build_model(cfg.model), cfg, steps_per_epoch=3)
    with pytest.raises(KeyboardInterrupt):
        fit(first, xy_dataset(), xy_dataset(2, seed=1), tmp_path, cfg, verbose=0, callbacks=[Interrupt(0)])
    assert (tmp_path / "backup").is_dir()
    weights_at_kill = [w.copy() for w in first.get_weights()]
    # A new process would build a fresh model: its weights differ until the backup is restored.
    keras.utils.set_random_seed(1)
    second = compile_model(build_model(cfg.model), cfg, steps_per_epoch=3)
    restored: list[Any] = []

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            restored.extend(w.copy() for w in self.model.get_weights())

    epochs = fit(second, xy_dataset(), xy_dataset(2, seed=1), tmp_path, cfg, resume=True, verbose=0,
                 callbacks=[Capture()])
    assert epochs == [1, 2]  # continued after the finished epoch
    for a, b in zip(restored, weights_at_kill):
        np.testing.assert_allclose(a, b)
    assert not (tmp_path / "backup").exists()  # cleaned up once training finished
    with open(tmp_path / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert all(float(r["epoch_seconds"]) > 0 for r in rows)  # the epoch's wall time, resumed too
    assert (tmp_path / "best.keras").is_file()


def test_a_history_written_without_epoch_times_stays_aligned_on_resume(tmp_path: Path) -> None:
    """A run started before history.csv had ``epoch_seconds`` resumes without the column: the
    logger keeps the old header, and a new column would shift every value under it."""
    from fusion.callbacks import EpochTimer, make_callbacks

    cfg = RunConfig().replace(model=LOOP, train={"epochs": 2, "patience": 0})
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss\n0,2.0,1.5\n")

    def has_timer(resume: bool) -> bool:
        return any(isinstance(c, EpochTimer) for c in make_callbacks(tmp_path, cfg, resume, 0))

    assert not has_timer(resume=True)
    assert has_timer(resume=False)  # a fresh run rewrites the file with the column
    history.write_text("epoch,epoch_seconds,loss,val_loss\n0,3.2,2.0,1.5\n")
    assert has_timer(resume=True)


def test_a_run_with_the_weight_average_resumes_raw_weights_and_average(tmp_path: Path) -> None:
    """The backup is written before the average is swapped in: a resumed run trains on from the
    raw weights, and the optimizer's average comes back too."""
    cfg = RunConfig().replace(model=LOOP, train={"epochs": 3, "patience": 0, "warmup_epochs": 0,
                                                 "ema_momentum": 0.5})
    keras.utils.set_random_seed(0)
    first = compile_model(build_model(cfg.model), cfg, steps_per_epoch=3)
    with pytest.raises(KeyboardInterrupt):
        fit(first, xy_dataset(), xy_dataset(2, seed=1), tmp_path, cfg, verbose=0, callbacks=[Interrupt(0)])
    # Killed at an epoch's end: the model holds the average, the optimizer the raw weights.
    averaged_at_kill = [np.array(v) for v in first.trainable_weights]
    raw_at_kill = [np.array(v) for v in first.optimizer._model_variables_moving_average]
    assert not all(np.allclose(a, b) for a, b in zip(averaged_at_kill, raw_at_kill))
    keras.utils.set_random_seed(1)
    second = compile_model(build_model(cfg.model), cfg, steps_per_epoch=3)
    restored: dict[str, list[Any]] = {}

    class Capture(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if not restored:
                restored["raw"] = [np.array(v) for v in self.model.trainable_weights]
                restored["average"] = [np.array(v) for v in self.model.optimizer._model_variables_moving_average]

    assert fit(second, xy_dataset(), xy_dataset(2, seed=1), tmp_path, cfg, resume=True, verbose=0,
               callbacks=[Capture()]) == [1, 2]
    for got, want in zip(restored["raw"], raw_at_kill):
        np.testing.assert_allclose(got, want)
    for got, want in zip(restored["average"], averaged_at_kill):
        np.testing.assert_allclose(got, want)


def test_metrics_report_collapse_and_area() -> None:
    n = 4
    true = np.zeros((n, S, S), bool)
    true[:3, 4:10, 4:10] = True
    pred = true.copy()
    pred[1] = False  # a bleeding slice predicted empty: collapse check counts it
    fraction = true.mean(axis=(1, 2))
    probabilities = np.array([[0.9] * 6, [0.8] * 6, [0.7] * 6, [0.1] * 6], np.float32)
    batch = {
        "image": np.zeros((n, S, S, 4), np.float32), "id": [f"s{i}" for i in range(n)],
        "labels": np.array([[1] * 6, [1] * 6, [1] * 6, [0] * 6], np.float32),
        "has_labels": np.ones(n, np.float32), "mask": true[..., None].astype(np.float32),
        "has_mask": np.array([1, 1, 1, 1], np.float32),
        "area_fraction": fraction, "has_area": np.ones(n, np.float32),
        "area_mm2": fraction * S * S * 0.25, "has_area_mm2": np.ones(n, np.float32),
        "pixel_spacing": np.full((n, 2), 0.5, np.float32), "has_spacing": np.ones(n, np.float32),
    }

    class Fixed:  # the outputs a model would give for this batch
        def predict(self, images: Any, batch_size: int = 8, tta: str = "none") -> dict[str, Any]:
            return {"probabilities": probabilities, "decisions": (probabilities >= 0.5).astype(np.int32),
                    "area_fraction": fraction + 0.01, "mask": pred[..., None].astype(np.float32)}

    collected = scoring.collect(Fixed(), [batch])
    result, _ = scoring.compute_metrics(collected, np.full(6, 0.5), n_boot=0)
    summary = result["summary"]
    assert summary["macro_auc"] == pytest.approx(1.0)
    assert summary["empty_prediction_rate"] == pytest.approx(1 / 3)
    assert summary["dice"] == pytest.approx(0.75)  # 1, 0, 1 and the both-empty slice = 1
    assert summary["area_fraction_mae"] == pytest.approx(0.01)
    assert summary["area_mm2_mae"] == pytest.approx(0.01 * S * S * 0.25, rel=1e-5)
    size = result["segmentation"]["mask_size"]  # the predicted masks are exact where not empty
    assert size["pixel_precision"] == pytest.approx(1.0) and size["pixel_recall"] == pytest.approx(2 / 3)
    assert size["area_ratio"]["median"] == pytest.approx(1.0)
    json.dumps(result)  # JSON-ready


# --- CLI -------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_cli_missing_shards_folder(tmp_path: Path) -> None:
    result = invoke(str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "does not exist" in result.output and "fusion-build" in result.output


def test_cli_folder_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    result = invoke(str(tmp_path / "shards"), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "manifest.json" in result.output


def test_cli_empty_split(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", n_train=4, n_val=0)
    result = invoke(str(shards), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "'val' has no examples" in result.output
    assert not (tmp_path / "run").exists()  # nothing written before the checks pass


def test_cli_image_size_not_divisible(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", n_train=4, n_val=2)
    result = invoke(str(shards), "--out", str(tmp_path / "run"), "--image-size", "100")
    assert result.exit_code == 2
    assert "image_size" in result.output and "stride 16" in result.output


def test_cli_unknown_preset(tmp_path: Path) -> None:
    result = invoke(str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "bigger")
    assert result.exit_code == 2
    assert "unknown preset 'bigger'" in result.output


def test_cli_refuses_a_fusion_stride_that_would_do_nothing(tmp_path: Path) -> None:
    result = invoke(str(tmp_path), "--out", str(tmp_path / "run"), "--fusion-stride", "2")
    assert result.exit_code == 2
    assert "uses early fusion (the fusion preset's)" in result.output
    assert "--fusion attention" in result.output and "fusion-attention" in result.output


def test_cli_refuses_deep_supervision_deeper_than_the_decoder(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    preset("demo").replace(model=TINY).save(config)  # depth 2: one level below full resolution
    result = invoke(str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(config),
                    "--deep-supervision", "2")
    assert result.exit_code == 2
    assert "model.deep_supervision must be in 0..1" in result.output


def test_cli_trains_calibrates_and_exports(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards")
    run = tmp_path / "run"
    config = tmp_path / "tiny.json"
    # The checkpoint and early stopping on the mask head's loss (Keras needs mode="min" for it),
    # with a moving average of the weights (its optimizer state must save and load), and deep
    # supervision (a training-only output that calibration, export and re-export must drop).
    preset("demo").replace(model=TINY, train={"monitor": "val_mask_loss", "ema_momentum": 0.9}).save(config)
    args = [str(shards), "--out", str(run), "--config", str(config), "--width", "4", "--epochs", "1",
            "--deep-supervision", "1",
            "--batch-size", "4", "--class-pooling", "attention", "--norm", "batch", "--fusion", "attention",
            "--fusion-stride", "2", "--block", "plain", "--quiet"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    for name in ("config.json", "best.keras", "model.keras", "thresholds.json", "metrics.json",
                 "history.csv", "export/1/saved_model.pb", "export/1/README.md"):
        assert (run / name).exists(), name
    assert any((run / "logs").rglob("*tfevents*"))  # TensorBoard
    cfg = RunConfig.load(run / "config.json")
    assert (cfg.preset, cfg.model.image_size, cfg.model.width, cfg.train.epochs) == ("demo", S, 4, 1)
    assert cfg.model.norm == "batch"  # BatchNorm through training, calibration and the SavedModel
    assert (cfg.model.fusion, cfg.model.fusion_stride) == ("attention", 2)  # at half resolution
    assert cfg.model.block == "plain"  # on the plain U-Net's blocks
    assert cfg.model.class_pooling == "attention"
    assert (cfg.train.monitor, cfg.train.ema_momentum) == ("val_mask_loss", 0.9)
    assert cfg.model.deep_supervision == 1
    assert "mask_aux" in keras.saving.load_model(run / "best.keras").output_names  # what trains
    assert sorted(keras.saving.load_model(run / "model.keras").output_names) == ["area", "class", "mask"]
    assert "val_mask_aux_loss" in (run / "history.csv").read_text().splitlines()[0]
    saved = json.loads((run / "thresholds.json").read_text())
    assert list(saved["thresholds"]) == list(schema.LABEL_NAMES)
    # The mask threshold is calibrated on val too (here on too few bleeding slices: kept at 0.5,
    # with the curve and a note), and reaches the val metrics and the export.
    assert len(saved["mask_dice_by_threshold"]) == 13 and saved["mask_threshold"] == 0.5
    assert any("mask threshold left at 0.5" in n for n in saved["notes"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["segmentation"]["mask_threshold"] == saved["mask_threshold"]
    exported = json.loads((run / "export/1/fusion_export.json").read_text())
    assert exported["mask_threshold"] == 0.5 and exported["tta"] == "flip"  # flip in the graph by default
    assert metrics["split"] == "val" and metrics["n_slices"] == 8
    assert set(metrics["classification"]["per_class"]) == set(schema.LABEL_NAMES)
    assert metrics["segmentation"]["n"] == 6  # val slices with a known mask
    assert "empty_prediction_rate" in metrics["summary"] and "area_fraction_mae" in metrics["summary"]
    # A second run into the same folder is refused without --resume / --overwrite.
    again = invoke(*args)
    assert again.exit_code == 2 and "--resume" in again.output
    # Re-export as servable version 3, next to version 1 (TF Serving serves the highest).
    result = invoke(str(shards), "--out", str(run), "--export-only", "--export-version", "3",
                    "--export-tta", "none")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "export").iterdir()) == ["1", "3"]
    assert (run / "export" / "3" / "saved_model.pb").is_file()
    assert json.loads((run / "export/3/fusion_export.json").read_text())["tta"] == "none"
    assert invoke(str(shards), "--out", str(run), "--export-only", "--export-tta", "mirror").exit_code == 2
    # A run from before mask calibration (thresholds.json without it) gets one with --recalibrate.
    (run / "thresholds.json").write_text(json.dumps({"thresholds": saved["thresholds"]}))
    assert invoke(str(shards), "--out", str(run), "--recalibrate").exit_code == 2  # needs --export-only
    result = invoke(str(shards), "--out", str(run), "--export-only", "--recalibrate", "--export-version", "4")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "mask threshold 0.5" in result.output
    again = json.loads((run / "thresholds.json").read_text())
    assert again["thresholds"] == saved["thresholds"]  # same weights, same val split: same cuts
    assert len(again["mask_dice_by_threshold"]) == 13
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 1
    assert (run / "export" / "4" / "saved_model.pb").is_file()
    # Without --export-tta a re-export keeps what the latest export (3) serves: one pass.
    assert json.loads((run / "export/4/fusion_export.json").read_text())["tta"] == "none"
    assert "(test-time augmentation: none)" in result.output


def test_resume_rules_and_best_so_far(tmp_path: Path) -> None:
    from fusion.callbacks import best_logged
    from fusion.errors import TrainError
    from fusion.run_folder import prepare_run_dir

    cfg = preset("demo")
    run = tmp_path / "run"
    with pytest.raises(TrainError, match="cannot resume"):
        prepare_run_dir(run, cfg, resume=True, overwrite=False)
    assert prepare_run_dir(run, cfg, resume=False, overwrite=False) == cfg
    (run / "history.csv").write_text("epoch,loss,val_loss,val_mask_loss\n0,2.0,1.5,0.9\n1,1.0,0.7,0.8\n"
                                     "2,0.9,0.9,0.6\n")
    assert best_logged(run / "history.csv") == pytest.approx(0.7)
    assert best_logged(run / "history.csv", "val_mask_loss") == pytest.approx(0.6)
    assert best_logged(tmp_path / "missing.csv") is None
    (run / "metrics.json").write_text("{}")
    with pytest.raises(TrainError, match="finished run"):
        prepare_run_dir(run, cfg, resume=True, overwrite=False)
    (run / "backup").mkdir()  # killed mid-way: resumable
    assert prepare_run_dir(run, preset("fusion"), resume=True, overwrite=False) == cfg
    with pytest.raises(TrainError, match="--overwrite"):
        prepare_run_dir(run, cfg, resume=False, overwrite=False)


def test_auto_positive_weights_from_manifest_counts() -> None:
    from fusion.train import auto_pos_weights, resolve_loss_config

    def with_train_counts(counts: SplitCounts) -> Manifest:
        return Manifest(schema_version=schema.SCHEMA_VERSION, source="render",
                        presets=tuple(windows.PRESETS.values()), shards=(),
                        counts={"train": counts, "val": SplitCounts(), "test": SplitCounts()})

    manifest = with_train_counts(SplitCounts(slices=100, with_labels=100, by_type={
        "any": 50, "epidural": 4, "intraparenchymal": 20, "intraventricular": 0, "subarachnoid": 1, "subdural": 99}))
    weights = auto_pos_weights(manifest)
    assert weights is not None
    assert weights[0] == pytest.approx(1.0)  # balanced
    assert weights[1] == pytest.approx(np.sqrt(96 / 4))
    assert weights[2] == pytest.approx(2.0)
    assert weights[3] == 10.0 and weights[4] == pytest.approx(np.sqrt(99))  # clipped / rare
    assert weights[5] == 1.0  # more positives than negatives: never below 1
    cfg = resolve_loss_config(preset("demo"), manifest)
    assert cfg.loss.class_pos_weight == weights
    assert auto_pos_weights(with_train_counts(SplitCounts())) is None
    assert resolve_loss_config(preset("demo"), with_train_counts(SplitCounts())).loss.class_pos_weight == (1.0,)


def test_mirrored_strategy_trains_on_one_cpu(tmp_path: Path) -> None:
    # MirroredStrategy over the local devices (here the one CPU): the same code path a
    # multi-GPU machine takes, model built in the strategy's scope and fit on its replicas.
    from fusion.errors import TrainError
    from fusion.train import train

    shards = write_shards(tmp_path / "shards")
    cfg = preset("demo").replace(model=LOOP, train={"epochs": 1, "batch_size": 4})
    result = train(shards, tmp_path / "run", cfg, strategy="mirrored", export=False, verbose=0)
    assert result.epochs_run == 1 and (tmp_path / "run" / "best.keras").is_file()
    assert np.isfinite(result.metrics["summary"]["dice"])
    with pytest.raises(TrainError, match="unknown strategy"):
        train(shards, tmp_path / "other", cfg, strategy="tpu", export=False, verbose=0)


def test_precision_policy_follows_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from fusion import optim as T

    assert T.select_precision() == "float32"  # this machine: CPU only
    capability = {"value": (8, 0)}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"compute_capability": capability["value"]})
    assert T.select_precision() == "mixed_bfloat16"  # Ampere and later
    capability["value"] = (7, 5)
    assert T.select_precision() == "mixed_float16"  # Turing, Volta


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_model_outputs_stay_float32_under_mixed_precision(policy: str) -> None:
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(preset("demo").replace(model=TINY).model)
        out = model(np.zeros((1, S, S, 4), np.float32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for name, value in out.items():
        assert keras.backend.standardize_dtype(value.dtype) == "float32", name


def test_a_collapsed_mask_head_is_flagged() -> None:
    from fusion.scoring import collapse_note

    collapsed = {"summary": {"empty_prediction_rate": 0.5}, "segmentation": {"n_true_nonempty": 10}}
    note = collapse_note(collapsed)
    assert note is not None and "50%" in note and "10 bleeding" in note
    assert collapse_note({"summary": {"empty_prediction_rate": 0.1}}) is None  # at the limit: fine
    assert collapse_note({"summary": {}}) is None  # no mask head or no bleeding slice: nothing to say


def test_checkpoint_schedule_and_early_stop_follow_the_monitor(tmp_path: Path) -> None:
    import keras

    from fusion.callbacks import make_callbacks

    cfg = preset("fusion").replace(train={"schedule": "plateau", "patience": 3, "monitor": "val_mask_loss"})
    callbacks = make_callbacks(tmp_path, cfg, resume=False, verbose=0)
    watched = {type(c).__name__: c.monitor for c in callbacks if hasattr(c, "monitor")}
    assert watched == {"ModelCheckpoint": "val_mask_loss", "ReduceLROnPlateau": "val_mask_loss",
                       "EarlyStopping": "val_mask_loss"}
    assert any(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks)


def test_the_weight_average_is_validated_checkpointed_and_kept_after_an_early_stop(tmp_path: Path) -> None:
    import keras
    import numpy as np

    from fusion.callbacks import AveragedWeights, make_callbacks

    class Weights(keras.callbacks.Callback):
        def __init__(self, stop_at: int | None = None) -> None:
            super().__init__()
            self.seen: list[np.ndarray] = []
            self.stop_at = stop_at

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.seen.append(np.array(self.model.get_weights()[0]))
            if epoch == self.stop_at:
                self.model.stop_training = True

    # The order make_callbacks gives: backup (raw weights), early stop, the swap, the checkpoint.
    cfg = preset("fusion").replace(train={"ema_momentum": 0.9})
    order = [type(c).__name__ for c in make_callbacks(tmp_path, cfg, resume=False, verbose=0)]
    assert order.index("BackupAndRestore") < order.index("EarlyStopping") < order.index("AveragedWeights") \
        < order.index("ModelCheckpoint")
    assert "AveragedWeights" not in [type(c).__name__ for c in make_callbacks(tmp_path, preset("fusion"), False, 0)]

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.AdamW(0.1, use_ema=True, ema_momentum=0.9), loss="mse")
    raw, averaged = Weights(stop_at=1), Weights()  # raw stands in for early stopping: epoch 2 of 5
    history = model.fit(x, y, validation_data=(x, y), epochs=5, batch_size=8, verbose=0,
                        callbacks=[raw, AveragedWeights(), averaged])
    assert len(history.history["loss"]) == 2
    assert not np.allclose(raw.seen[-1], averaged.seen[-1])  # the average lags the raw weights
    final = np.array(model.get_weights()[0])
    np.testing.assert_allclose(final, averaged.seen[-1], rtol=1e-6)  # not the raw weights
    # Validation saw the average too: the last val_loss is the kept model's loss.
    assert abs(model.evaluate(x, y, verbose=0) - history.history["val_loss"][-1]) < 1e-4
