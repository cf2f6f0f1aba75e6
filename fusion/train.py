"""Training: tf.data in, `model.fit` with callbacks, then calibration, metrics and export.

`train(shards_dir, run_dir, cfg)` is the whole of ``fusion-train``:

1. check the shards (manifest, non-empty train and val splits, image size vs encoder stride);
2. write ``RUN/config.json``;
3. fit with AdamW (cosine schedule with warm-up, or ReduceLROnPlateau), the masked multi-task
   losses (`fusion.losses`), best checkpoint ``RUN/best.keras`` (val_loss), early stopping,
   TensorBoard ``RUN/logs``, CSV ``RUN/history.csv`` and BackupAndRestore ``RUN/backup`` (a
   killed run continues from its last finished epoch with ``resume=True``);
4. reload the best checkpoint, calibrate per-type thresholds on the validation split
   (``RUN/thresholds.json``), write validation metrics (``RUN/metrics.json``);
5. save ``RUN/model.keras`` (the best weights) and export ``RUN/export`` (`fusion.export`).

Mixed precision (bfloat16 on compute capability >= 8, else float16) is switched on when a GPU
is visible; the model's outputs stay float32.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from data_build.schema import LABEL_NAMES
from fusion import metrics
from fusion.augment import augment_dataset
from data_build.files import atomic_write_text
from fusion.config import RunConfig
from fusion.losses import AREA_SCALE, build_losses
from fusion.model import build_model

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("default", "mirrored")
#: Probability at which a mask pixel counts as bleed in metrics and exports.
MASK_THRESHOLD = 0.5


class TrainError(ValueError):
    """Training cannot start or finish with the given shards, run folder or settings."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced.

    Attributes:
      run_dir: the run folder.
      metrics: the contents of RUN/metrics.json.
      thresholds: [6] calibrated thresholds in LABEL_NAMES order.
      epochs_run: epochs fitted in this call (fewer than cfg.train.epochs after a resume or an
        early stop).
    """

    run_dir: Path
    metrics: dict[str, Any]
    thresholds: np.ndarray
    epochs_run: int


# --- shards --------------------------------------------------------------------------------


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    """The shards' manifest (via `fusion.data.load_manifest`).

    Raises:
      TrainError: no such folder, no manifest.json, an unreadable or other-version one.
    """
    from fusion import data

    try:
        return data.load_manifest(shards_dir)
    except data.ManifestError as err:
        raise TrainError(str(err)) from None


def split_count(manifest: Mapping[str, Any], split: str, masked_only: bool = False) -> int:
    """Number of slices of `split` (with a known mask when `masked_only`), from the manifest."""
    counts = manifest.get("counts", {}).get(split)
    if isinstance(counts, Mapping):
        key = "with_mask" if masked_only else "slices"
        if key in counts:
            return int(counts[key])
    # Older or partial manifests: fall back to the shard list (all slices).
    return sum(int(s.get("examples", 0)) for s in manifest.get("shards", []) if s.get("split") == split)


def check_inputs(shards_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """Validate shards and config before anything is written.

    Returns:
      The manifest.

    Raises:
      TrainError: missing manifest, an empty train or val split.
    """
    from fusion import data

    manifest = read_manifest(shards_dir)
    for split in ("train", "val"):
        try:
            data.shard_files(shards_dir, split, manifest)
        except (data.EmptySplitError, data.ManifestError) as err:
            raise TrainError(f"cannot train: {err}") from None
        n = split_count(manifest, split, masked_only=cfg.train.masked_only and split == "train")
        if n <= 0:
            what = "slices with a mask" if cfg.train.masked_only and split == "train" else "slices"
            raise TrainError(
                f"the {split} split of {shards_dir} has no {what}; rebuild the shards with more "
                f"data or other split fractions (fusion-build)"
            )
    return manifest


def auto_pos_weights(manifest: Mapping[str, Any]) -> tuple[float, ...] | None:
    """sqrt(negatives / positives) per label on the train split, clipped to [1, 10].

    Returns None when the manifest has no per-type counts. A label without positives gets 10.
    """
    counts = manifest.get("counts", {}).get("train", {})
    by_type = counts.get("by_type") if isinstance(counts, Mapping) else None
    n = counts.get("with_labels", counts.get("slices")) if isinstance(counts, Mapping) else None
    if not isinstance(by_type, Mapping) or not n:
        return None
    weights = []
    for name in LABEL_NAMES:
        pos = float(by_type.get(name, 0))
        ratio = (float(n) - pos) / pos if pos > 0 else 100.0
        weights.append(float(np.clip(math.sqrt(max(ratio, 0.0)), 1.0, 10.0)))
    return tuple(weights)


def resolve_loss_config(cfg: RunConfig, manifest: Mapping[str, Any]) -> RunConfig:
    """Apply ``loss.auto_pos_weight`` from the manifest (the config file keeps the flag)."""
    if not cfg.loss.auto_pos_weight:
        return cfg
    weights = auto_pos_weights(manifest)
    if weights is None:
        log.warning("manifest has no per-type counts: class_pos_weight stays %s", cfg.loss.class_pos_weight)
        return cfg
    log.info("class positive weights (auto): %s", dict(zip(LABEL_NAMES, [round(w, 2) for w in weights])))
    return cfg.replace(loss={"class_pos_weight": weights})


def manifest_presets(manifest: Mapping[str, Any]) -> dict[str, tuple[float, float]] | None:
    """The manifest's window presets {name: (level, width)}, None when absent."""
    presets = manifest.get("presets")
    if not isinstance(presets, Mapping):
        return None
    return {str(k): (float(v[0]), float(v[1])) for k, v in presets.items()}


# --- tf.data ---------------------------------------------------------------------------------


def to_model_io(batch: Mapping[str, tf.Tensor], heads: Sequence[str]) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Reader dict -> (image, packed targets) in the layout of `fusion.losses`.

    Returns:
      image [B, S, S, 4]; targets: class [B, 7], area [B, 2], mask [B, S, S, 2] (only `heads`).
    """
    y: dict[str, tf.Tensor] = {}
    if "class" in heads:
        y["class"] = tf.concat(
            [tf.cast(batch["labels"], tf.float32), tf.cast(batch["has_labels"], tf.float32)[:, None]], -1
        )
    if "area" in heads:
        target = tf.math.log1p(tf.cast(batch["area_fraction"], tf.float32) * AREA_SCALE)
        y["area"] = tf.stack([target, tf.cast(batch["has_area"], tf.float32)], -1)
    if "mask" in heads:
        mask = tf.cast(batch["mask"], tf.float32)
        known = tf.cast(batch["has_mask"], tf.float32)[:, None, None, None] * tf.ones_like(mask)
        y["mask"] = tf.concat([mask, known], -1)
    return batch["image"], y


def _masked_only(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    return (
        dataset.unbatch()
        .filter(lambda ex: ex["has_mask"] > 0.5)
        .batch(batch_size)
    )


def make_datasets(
    shards_dir: Path, cfg: RunConfig, presets: Mapping[str, Sequence[float]] | None
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Train (shuffled, augmented, (image, targets)) and val (reader dicts) datasets."""
    from fusion import data  # the reader; imported late so the rest works without shards

    t, size = cfg.train, cfg.model.image_size
    train_ds = data.make_dataset(
        shards_dir, "train", image_size=size, batch_size=t.batch_size, shuffle=True,
        seed=t.seed, repeat=t.steps_per_epoch is not None, augment=None,
    )
    if t.masked_only:
        train_ds = _masked_only(train_ds, t.batch_size)
    counts = data.load_manifest(shards_dir).get("counts", {})
    if t.steps_per_epoch is None:
        train_ds = _with_batch_count(train_ds, counts, "train", t.batch_size, t.masked_only)
    train_ds = augment_dataset(train_ds, cfg.augment, t.seed, presets)
    heads = cfg.model.heads
    train_ds = train_ds.map(lambda b: to_model_io(b, heads), num_parallel_calls=tf.data.AUTOTUNE)
    val_ds = data.make_dataset(
        shards_dir, "val", image_size=size, batch_size=t.batch_size, shuffle=False, seed=t.seed,
        repeat=False, augment=None,
    )
    val_ds = _with_batch_count(val_ds, counts, "val", t.batch_size)
    return train_ds.prefetch(tf.data.AUTOTUNE), val_ds


def _with_batch_count(
    dataset: tf.data.Dataset, counts: Mapping[str, Any], split: str, batch_size: int,
    masked_only: bool = False,
) -> tf.data.Dataset:
    """Declare a finite split's batch count from the manifest's exact counts.

    Keras otherwise learns an epoch's length by running off its end on the first epoch, with a
    "Your input ran out of data" warning that reads like a failure.
    """
    key = "with_mask" if masked_only else "slices"
    if key not in counts.get(split, {}):
        return dataset
    batches = math.ceil(int(counts[split][key]) / batch_size)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches))


# --- model and callbacks ---------------------------------------------------------------------


def select_precision() -> str:
    """Mixed precision policy for the visible hardware: float32 on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    details = tf.config.experimental.get_device_details(gpus[0])
    major = (details.get("compute_capability") or (0, 0))[0]
    return "mixed_bfloat16" if major >= 8 else "mixed_float16"


def make_optimizer(cfg: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW with the configured schedule (bias and normalisation weights not decayed)."""
    t = cfg.train
    lr: Any = t.learning_rate
    if t.schedule == "cosine":
        total = max(1, t.epochs * steps_per_epoch)
        warmup = min(t.warmup_epochs * steps_per_epoch, total - 1)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=t.learning_rate * (0.1 if warmup else 1.0),
            decay_steps=max(1, total - warmup),
            alpha=0.01,
            warmup_target=t.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay, clipnorm=t.clipnorm)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_model(model: keras.Model, cfg: RunConfig, steps_per_epoch: int) -> keras.Model:
    """Compile with the masked losses keyed by output name and AdamW."""
    losses, weights = build_losses(cfg.loss, list(model.output_names))
    jit = cfg.train.jit_compile
    if jit is None:
        jit = bool(tf.config.list_physical_devices("GPU"))
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=losses, loss_weights=weights,
                  jit_compile=jit)
    return model


def make_callbacks(run_dir: Path, cfg: RunConfig, resume: bool, verbose: int) -> list[keras.callbacks.Callback]:
    """Backup (first, so an interrupted epoch is never half-saved), checkpoint, logs, LR, stop."""
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "best.keras"), monitor="val_loss", save_best_only=True, verbose=0,
            # On resume, only a better epoch than those already logged may replace best.keras.
            initial_value_threshold=best_logged(run_dir / "history.csv") if resume else None,
        ),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
        tensorboard_callback(run_dir / "logs"),
        keras.callbacks.TerminateOnNaN(),
    ]
    if cfg.train.schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, cfg.train.patience // 3), verbose=verbose)
        )
    if cfg.train.patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.train.patience, restore_best_weights=False)
        )
    return callbacks


def best_logged(history_csv: Path, key: str = "val_loss") -> float | None:
    """Lowest `key` in a CSVLogger file, None when there is none."""
    import csv

    try:
        with open(history_csv, newline="", encoding="utf-8") as handle:
            values = [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]
    except (OSError, ValueError, KeyError):
        return None
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) if finite else None


class EpochSummaries(keras.callbacks.Callback):
    """Epoch metrics as TensorBoard scalars without the tensorboard package.

    `keras.callbacks.TensorBoard` needs the tensorboard pip package for `tf.summary.scalar`;
    this writes the same event files with the core `tf.summary.write` op and scalar-plugin
    metadata, so ``tensorboard --logdir RUN/logs`` shows them.
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}
        from tensorflow.core.framework import summary_pb2

        self._metadata = summary_pb2.SummaryMetadata()
        self._metadata.plugin_data.plugin_name = "scalars"
        self._metadata.data_class = summary_pb2.DATA_CLASS_SCALAR

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            split, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.write(f"epoch_{tag}", tf.constant(float(value), tf.float32), step=epoch,
                                 metadata=self._metadata)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback:
    """Keras' TensorBoard callback when tensorboard is installed, else `EpochSummaries`."""
    try:
        import tensorboard  # noqa: F401  (only checking it is there)
    except ImportError:
        return EpochSummaries(log_dir)
    return keras.callbacks.TensorBoard(str(log_dir), write_graph=False, profile_batch=0)


class _EpochCounter(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.epochs.append(epoch)


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run_dir: Path,
    cfg: RunConfig,
    resume: bool = False,
    verbose: int | str = "auto",
    callbacks: Iterable[keras.callbacks.Callback] = (),
) -> list[int]:
    """`model.fit` with the run's callbacks. Returns the epoch indices fitted in this call.

    Args:
      model: a compiled model.
      train_ds: yields (image, packed targets).
      val_ds: yields (image, packed targets).
      run_dir: the run folder (backup, checkpoint and logs go there).
      cfg: run config (epochs, steps_per_epoch, patience, schedule).
      resume: append to history.csv (BackupAndRestore resumes whenever RUN/backup exists).
      verbose: Keras verbosity; "auto" shows a progress bar on a terminal, one line per epoch
        otherwise.
      callbacks: extra callbacks, run after the run's own.
    """
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    counter = _EpochCounter()
    all_callbacks = [*make_callbacks(run_dir, cfg, resume, int(verbose)), counter, *callbacks]
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.train.epochs,
        steps_per_epoch=cfg.train.steps_per_epoch,
        callbacks=all_callbacks,
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles, seeded; Keras cannot shuffle a Dataset
    )
    return counter.epochs


# --- evaluation ----------------------------------------------------------------------------


def predict_split(model: keras.Model, dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    """Run the model over reader dicts and gather predictions with their references.

    Returns:
      NumPy arrays over N slices: probabilities [N, 6], labels [N, 6], has_labels [N],
      pred_mask / true_mask [N, S, S] bool (when the model has a mask head), has_mask [N],
      pred_area / area_fraction [N] (fraction), has_area [N], area_mm2 [N], has_area_mm2 [N],
      pixel_spacing [N, 2] (mm at size S).
    """
    keys = ("labels", "has_labels", "has_mask", "area_fraction", "has_area", "area_mm2",
            "has_area_mm2", "pixel_spacing")
    parts: dict[str, list[np.ndarray]] = {}

    def add(key: str, value: Any) -> None:
        parts.setdefault(key, []).append(np.asarray(value))

    for batch in dataset:
        out = model.predict_on_batch(batch["image"])
        add("probabilities", np.asarray(out["class"], np.float32))
        if "mask" in out:
            add("pred_mask", np.asarray(out["mask"])[..., 0] >= MASK_THRESHOLD)
            add("true_mask", batch["mask"].numpy()[..., 0] >= 0.5)
        if "area" in out:
            target = np.asarray(out["area"], np.float64)[:, 0]
            add("pred_area", np.clip(np.expm1(target) / AREA_SCALE, 0.0, 1.0))
        for key in keys:
            if key in batch:
                add(key, batch[key].numpy())
    if not parts:
        raise TrainError("the evaluation split yielded no slices")
    return {k: np.concatenate(v) for k, v in parts.items()}


def calibrate(pred: Mapping[str, np.ndarray], notes: list[str] | None = None) -> np.ndarray:
    """Per-type thresholds (max F1) on slices with labels. Returns [6] float64."""
    known = pred["has_labels"] > 0.5
    return metrics.calibrate_thresholds(
        pred["labels"][known], pred["probabilities"][known], names=LABEL_NAMES, notes=notes
    )


def evaluate_predictions(pred: Mapping[str, np.ndarray], thresholds: np.ndarray, image_size: int) -> dict[str, Any]:
    """Validation metrics for metrics.json.

    Classification on slices with labels (per-type AUC, AUPRC, F1 at `thresholds`, macro);
    segmentation on slices with a known mask (Dice, IoU, empty predictions on bleeding slices);
    area on slices with a known area (fraction) and a known spacing (mm^2).
    """
    out: dict[str, Any] = {"n_slices": int(len(pred["probabilities"]))}
    known = pred["has_labels"] > 0.5
    out["classification"] = metrics.classification_report(
        pred["labels"][known], pred["probabilities"][known], thresholds, LABEL_NAMES
    )
    summary: dict[str, Any] = {
        "macro_auc": out["classification"]["macro"]["auc"],
        "macro_auprc": out["classification"]["macro"]["auprc"],
        "macro_f1": out["classification"]["macro"]["f1"],
    }
    if "pred_mask" in pred:
        has_mask = pred["has_mask"] > 0.5
        if has_mask.any():
            seg = metrics.segmentation_report(pred["pred_mask"][has_mask], pred["true_mask"][has_mask])
            out["segmentation"] = seg
            summary.update(
                dice=seg["dice"]["mean"],
                iou=seg["iou"]["mean"],
                dice_nonempty=seg["dice_nonempty"]["mean"],
                empty_prediction_rate=seg["empty_prediction_rate"],
            )
        else:
            out["segmentation"] = {"n": 0, "note": "no validation slice has a known mask"}
    if "pred_area" in pred:
        has_area = pred["has_area"] > 0.5
        area: dict[str, Any] = {"n": int(has_area.sum())}
        if has_area.any():
            err = pred["pred_area"][has_area] - pred["area_fraction"][has_area]
            area["fraction_mae"] = float(np.mean(np.abs(err)))
            area["fraction_bias"] = float(np.mean(err))
            summary["area_fraction_mae"] = area["fraction_mae"]
        has_mm2 = pred.get("has_area_mm2", np.zeros(0)) > 0.5
        if has_mm2.any():
            spacing = pred["pixel_spacing"][has_mm2]
            pred_mm2 = pred["pred_area"][has_mm2] * image_size * image_size * spacing[:, 0] * spacing[:, 1]
            err_mm2 = pred_mm2 - pred["area_mm2"][has_mm2]
            area.update(n_mm2=int(has_mm2.sum()), mm2_mae=float(np.mean(np.abs(err_mm2))),
                        mm2_bias=float(np.mean(err_mm2)))
            summary["area_mm2_mae"] = area["mm2_mae"]
        out["area"] = area
    out["summary"] = summary
    return metrics.nan_to_none(out)


def thresholds_json(thresholds: np.ndarray, notes: Sequence[str]) -> dict[str, Any]:
    return {
        "thresholds": {name: float(t) for name, t in zip(LABEL_NAMES, thresholds)},
        "names": list(LABEL_NAMES),
        "calibrated_on": "val",
        "rule": "max F1 per type; a slice is positive when probability >= threshold",
        "notes": list(notes),
    }


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# --- the whole run ---------------------------------------------------------------------------


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> RunConfig:
    """Create or reuse RUN. Returns the config to train with (RUN/config.json on resume).

    Raises:
      TrainError: RUN holds a run and neither `resume` nor `overwrite` was given; `resume`
        without a RUN/config.json.
    """
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.is_file():
            raise TrainError(f"cannot resume: {config_path} does not exist (start the run without --resume)")
        if (run_dir / "metrics.json").is_file() and not (run_dir / "backup").exists():
            raise TrainError(
                f"{run_dir} holds a finished run: nothing to resume (use --overwrite to train "
                f"again, or --export-only to re-export it)"
            )
        return RunConfig.load(config_path)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TrainError(
                f"run folder {run_dir} is not empty; pass --resume to continue it or --overwrite "
                f"to start again"
            )
        if not config_path.is_file():
            raise TrainError(f"refusing to overwrite {run_dir}: it is not a run folder (no config.json)")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(config_path)
    return cfg


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise TrainError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def train(
    shards_dir: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    strategy: str = "default",
    export: bool = True,
    verbose: int | str = "auto",
    callbacks: Iterable[keras.callbacks.Callback] = (),
    export_version: int = 1,
) -> TrainResult:
    """Train, calibrate, evaluate on val and export (see the module docstring).

    Args:
      shards_dir: folder written by fusion-build (manifest.json + TFRecord shards).
      run_dir: run folder; created, or continued with `resume`.
      cfg: run config (ignored on resume: RUN/config.json is used).
      resume: continue a killed run from RUN/backup.
      overwrite: replace an existing run folder.
      strategy: "default" or "mirrored" (tf.distribute.MirroredStrategy over local GPUs).
      export: write RUN/model.keras and RUN/export/<export_version> at the end.
      verbose: Keras verbosity ("auto", 0, 1, 2).
      callbacks: extra Keras callbacks (tests use them to interrupt a run).
      export_version: TF Serving version folder of the export (a positive integer).

    Raises:
      TrainError: bad shards, run folder or strategy.
      fusion.config.ConfigError: an invalid config.
    """
    shards_dir, run_dir = Path(shards_dir), Path(run_dir)
    dist = make_strategy(strategy)
    manifest = check_inputs(shards_dir, cfg)
    cfg = prepare_run_dir(run_dir, cfg, resume, overwrite)
    if resume:
        manifest = check_inputs(shards_dir, cfg)
    presets = manifest_presets(manifest)
    keras.utils.set_random_seed(cfg.train.seed)
    policy = select_precision()
    keras.mixed_precision.set_global_policy(policy)
    log.info("precision policy %s, strategy %s", policy, strategy)
    try:
        train_ds, val_ds = make_datasets(shards_dir, cfg, presets)
        n_train = split_count(manifest, "train", masked_only=cfg.train.masked_only)
        steps = cfg.train.steps_per_epoch or max(1, math.ceil(n_train / cfg.train.batch_size))
        with dist.scope():
            model = compile_model(build_model(cfg.model), resolve_loss_config(cfg, manifest), steps)
        heads = cfg.model.heads
        val_xy = val_ds.map(lambda b: to_model_io(b, heads))
        epochs = fit(model, train_ds, val_xy, run_dir, cfg, resume=resume, verbose=verbose, callbacks=callbacks)
        best_path = run_dir / "best.keras"
        if best_path.is_file():
            model = keras.saving.load_model(best_path, compile=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return finish_run(model, val_ds, run_dir, cfg, manifest, epochs, export, export_version)


def finish_run(
    model: keras.Model,
    val_ds: tf.data.Dataset,
    run_dir: Path,
    cfg: RunConfig,
    manifest: Mapping[str, Any],
    epochs: Sequence[int],
    export: bool = True,
    export_version: int = 1,
) -> TrainResult:
    """Calibrate on val, write thresholds.json and metrics.json, save and export the model."""
    pred = predict_split(model, val_ds)
    notes: list[str] = []
    thresholds = calibrate(pred, notes)
    write_json(run_dir / "thresholds.json", thresholds_json(thresholds, notes))
    result = evaluate_predictions(pred, thresholds, cfg.model.image_size)
    result = {"split": "val", "preset": cfg.preset, "epochs_run": len(epochs), **result}
    write_json(run_dir / "metrics.json", result)
    if export:
        from fusion.export import export_model  # TF SavedModel; imported late (heavy)

        export_model(model, run_dir, cfg, thresholds, manifest_presets(manifest), export_version)
    return TrainResult(run_dir=run_dir, metrics=result, thresholds=thresholds, epochs_run=len(epochs))
