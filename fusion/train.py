"""Training: `fusion-train` from shards to a calibrated, evaluated, exported run folder.

`train(shards_dir, run_dir, cfg)` is the whole of ``fusion-train``:

1. check the shards (`data_build.manifest.Manifest`: non-empty train and val splits);
2. create the run folder and write ``RUN/config.json`` (`fusion.run_folder`);
3. fit with AdamW (cosine schedule with warm-up, or ReduceLROnPlateau) and the masked
   multi-task losses (`fusion.optim`, `fusion.losses`), with the run's callbacks
   (`fusion.callbacks`: best checkpoint ``RUN/best.keras`` on val_loss, early stopping,
   TensorBoard ``RUN/logs``, ``RUN/history.csv``, BackupAndRestore ``RUN/backup`` so a killed
   run continues from its last finished epoch with ``resume=True``);
4. reload the best checkpoint, calibrate per-type thresholds on the validation split
   (``RUN/thresholds.json``, `fusion.thresholds`) and score it (``RUN/metrics.json``) through
   the same `fusion.scoring` path as `fusion-evaluate`;
5. save ``RUN/model.keras`` (the best weights) and export ``RUN/export`` (`fusion.export`).

Any Keras backend (`fusion.backend`, select it before importing this module): TensorFlow reads
shards with tf.data, JAX and PyTorch with `fusion.reader` and never import TensorFlow
(`fusion.train_data`); there step 5 saves ``RUN/model.keras`` and writes
``RUN/EXPORT_LATER.txt`` (export later with ``fusion-train --export-only``) instead of the
SavedModel.

Mixed precision (bfloat16 on compute capability >= 8, else float16) is switched on when the
backend sees a GPU; the model's outputs stay float32.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import keras
import numpy as np

from data_build.manifest import Manifest, ManifestError
from data_build.schema import LABEL_NAMES
from fusion import backend, metrics, scoring
from fusion.callbacks import EpochCounter, make_callbacks
from fusion.config import RunConfig
from fusion.errors import TrainError
from fusion.inference import DEFAULT_TTA, TTA_MODES
from fusion.model import build_model, inference_model
from fusion.optim import compile_model
from fusion.run_folder import (
    CONFIG_FILE,
    EXPORT_NOTE,
    METRICS_FILE,
    find_checkpoint,
    prepare_run_dir,
    save_without_export,
    write_metrics,
    write_windows,
)
from fusion.thresholds import Thresholds
from fusion.train_data import make_run_data, val_reader

log = logging.getLogger(__name__)

#: Bootstrap resamples behind the validation metrics' 95 % intervals (as fusion-evaluate).
VAL_BOOTSTRAP = 1000


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


def check_inputs(shards_dir: Path, cfg: RunConfig) -> Manifest:
    """Validate shards and config before anything is written.

    Returns:
      The manifest.

    Raises:
      TrainError: missing manifest, an empty train or val split.
    """
    from fusion import reader  # no TensorFlow; imported late so `--help` stays fast

    try:
        manifest = Manifest.load(shards_dir)
    except ManifestError as err:
        raise TrainError(str(err)) from None
    for split in ("train", "val"):
        try:
            reader.shard_files(shards_dir, split, manifest)
        except (reader.EmptySplitError, ManifestError) as err:
            raise TrainError(f"cannot train: {err}") from None
        masked_only = cfg.train.masked_only and split == "train"
        if manifest.split_count(split, masked_only) <= 0:
            what = "slices with a mask" if masked_only else "slices"
            raise TrainError(
                f"the {split} split of {shards_dir} has no {what}; rebuild the shards with more "
                f"data or other split fractions (fusion-build)"
            )
    return manifest


def auto_pos_weights(manifest: Manifest) -> tuple[float, ...] | None:
    """sqrt(negatives / positives) per label on the train split, clipped to [1, 10].

    Returns None when the manifest has no per-type counts. A label without positives gets 10.
    """
    counts = manifest.counts["train"]
    n = counts.with_labels or counts.slices
    if not counts.by_type or not n:
        return None
    weights = []
    for name in LABEL_NAMES:
        pos = float(counts.by_type.get(name, 0))
        ratio = (float(n) - pos) / pos if pos > 0 else 100.0
        weights.append(float(np.clip(math.sqrt(max(ratio, 0.0)), 1.0, 10.0)))
    return tuple(weights)


def resolve_loss_config(cfg: RunConfig, manifest: Manifest) -> RunConfig:
    """Apply ``loss.auto_pos_weight`` from the manifest (the config file keeps the flag)."""
    if not cfg.loss.auto_pos_weight:
        return cfg
    weights = auto_pos_weights(manifest)
    if weights is None:
        log.warning("manifest has no per-type counts: class_pos_weight stays %s", cfg.loss.class_pos_weight)
        return cfg
    log.info("class positive weights (auto): %s", dict(zip(LABEL_NAMES, [round(w, 2) for w in weights])))
    return cfg.replace(loss={"class_pos_weight": weights})


# --- fit -------------------------------------------------------------------------------------


def fit(
    model: keras.Model,
    train_ds: Any,
    val_ds: Any,
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
    counter = EpochCounter()
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


# --- the whole run ---------------------------------------------------------------------------


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
    cache_dir: str | Path | None = None,
    export_tta: str = DEFAULT_TTA,
) -> TrainResult:
    """Train, calibrate, evaluate on val and export (see the module docstring).

    Args:
      shards_dir: folder written by fusion-build (manifest.json + TFRecord shards).
      run_dir: run folder; created, or continued with `resume`.
      cfg: run config (ignored on resume: RUN/config.json is used).
      resume: continue a killed run from RUN/backup.
      overwrite: replace an existing run folder.
      strategy: "default" or "mirrored" (tf.distribute.MirroredStrategy over local GPUs; only on
        the TensorFlow backend).
      export: write RUN/model.keras and RUN/export/<export_version> at the end (off TensorFlow:
        RUN/model.keras and RUN/EXPORT_LATER.txt).
      verbose: Keras verbosity ("auto", 0, 1, 2).
      callbacks: extra Keras callbacks (tests use them to interrupt a run).
      export_version: TF Serving version folder of the export (a positive integer).
      cache_dir: ``--cache``: the decoded cache folder (`fusion.decoded_cache`), None for none.
      export_tta: test-time augmentation the SavedModel runs in its graph (`fusion.export`).

    Raises:
      TrainError: bad shards, run folder or strategy.
      fusion.config.ConfigError: an invalid config.
    """
    shards_dir, run_dir = Path(shards_dir), Path(run_dir)
    if export_tta not in TTA_MODES:  # refused before training, not after it
        raise TrainError(f"export tta must be one of {', '.join(TTA_MODES)}; got {export_tta!r}")
    dist = backend.make_strategy(strategy)
    manifest = check_inputs(shards_dir, cfg)
    cfg = prepare_run_dir(run_dir, cfg, resume, overwrite)
    if resume:
        manifest = check_inputs(shards_dir, cfg)
    backend.start_run(cfg.train.seed)
    policy = backend.select_precision()
    keras.mixed_precision.set_global_policy(policy)
    log.info("backend %s, precision policy %s, strategy %s", backend.current_backend(), policy, strategy)
    try:
        run_data = make_run_data(shards_dir, cfg, None if cache_dir is None else Path(cache_dir))
        n_train = manifest.split_count("train", cfg.train.masked_only)
        steps = cfg.train.steps_per_epoch or max(1, math.ceil(n_train / cfg.train.batch_size))
        with dist.scope():
            model = compile_model(build_model(cfg.model), resolve_loss_config(cfg, manifest), steps)
        epochs = fit(model, run_data.train, run_data.val_fit, run_dir, cfg, resume=resume, verbose=verbose,
                     callbacks=callbacks)
        best_path = run_dir / "best.keras"
        if best_path.is_file():
            model = keras.saving.load_model(best_path, compile=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return finish_run(model, run_data.val_batches, run_dir, cfg, manifest, epochs, export, export_version,
                      shards_dir=shards_dir, export_tta=export_tta)


def validate(
    model: keras.Model, val_batches: Iterable[Mapping[str, Any]], cfg: RunConfig
) -> tuple[Thresholds, dict[str, Any]]:
    """Calibrate thresholds on the validation batches and score them (`fusion.scoring`).

    Returns:
      The thresholds and the metrics.json content (without run metadata).

    Raises:
      TrainError: the validation split yielded no slice.
    """
    c = scoring.collect(scoring.ModelPredictor(model), val_batches, n_overlays=0, mask_grid=metrics.MASK_GRID)
    if not c.ids:
        raise TrainError("the evaluation split yielded no slice")
    labels, probabilities = np.concatenate(c.labels), np.concatenate(c.probabilities)
    known = c.cat("has_labels").astype(bool)
    notes: list[str] = []
    values = metrics.calibrate_thresholds(labels[known], probabilities[known], names=LABEL_NAMES, notes=notes)
    mask_threshold, curve = calibrate_mask(c, notes)
    thresholds = Thresholds.from_array(values, notes, mask=mask_threshold, mask_curve=curve)
    c.decisions = [(p >= values[None, :]).astype(np.int32) for p in c.probabilities]
    result, _ = scoring.compute_metrics(c, values, n_boot=VAL_BOOTSTRAP, seed=cfg.train.seed)
    return thresholds, result


def calibrate_mask(c: scoring.Collected, notes: list[str]) -> tuple[float, dict[str, float]]:
    """Choose the mask threshold on the collected split (`metrics.calibrate_mask_threshold`) and
    re-count `c`'s mask figures at it. A model without a mask head, or a split without a known
    mask, keeps 0.5 and no curve."""
    scored = c.cat("has_mask").astype(bool) & c.cat("mask_predicted").astype(bool)
    if not scored.any():
        return metrics.DEFAULT_THRESHOLD, {}
    threshold, curve = metrics.calibrate_mask_threshold(
        c.cat("grid_both")[scored], c.cat("grid_pred")[scored], c.cat("pixels_true")[scored],
        c.mask_grid, notes=notes)
    c.use_mask_threshold(threshold)
    log.info("mask threshold %.2f (mean validation Dice %.3f; %.3f at 0.50)", threshold,
             curve[f"{threshold:.2f}"], curve["0.50"])
    return threshold, curve


def finish_run(
    model: keras.Model,
    val_ds: Any,
    run_dir: Path,
    cfg: RunConfig,
    manifest: Manifest,
    epochs: Sequence[int],
    export: bool = True,
    export_version: int = 1,
    shards_dir: Path | None = None,
    export_tta: str = DEFAULT_TTA,
) -> TrainResult:
    """Calibrate on val, write thresholds.json and metrics.json, save and export the model.

    Off TensorFlow no SavedModel can be written: RUN/model.keras is saved and
    RUN/EXPORT_LATER.txt says how to export on a machine with TensorFlow (`shards_dir` names
    the shards in that command).
    """
    model = inference_model(model)  # deep supervision's heads train; they are not the model
    thresholds, result = validate(model, val_ds, cfg)
    thresholds.save(run_dir)
    result = {"split": "val", "preset": cfg.preset, "epochs_run": len(epochs), **result}
    note = scoring.collapse_note(result)
    if note:
        log.warning("%s", note)
        result["notes"] = [note, *result.get("notes", [])]
    write_metrics(run_dir, result)
    write_windows(run_dir, manifest.presets)  # every run: model.keras / best.keras need them too
    if export and not backend.uses_tensorflow():
        save_without_export(model, run_dir, Path(shards_dir or "SHARDS"), backend.current_backend(), export_tta)
        log.warning("no SavedModel on the %s backend: %s says how to export later",
                    backend.current_backend(), run_dir / EXPORT_NOTE)
    elif export:
        from fusion.export import export_model  # TF SavedModel; imported late (heavy)

        export_model(model, run_dir, cfg, thresholds, manifest.presets, export_version, export_tta)
    return TrainResult(run_dir=run_dir, metrics=result, thresholds=thresholds.array, epochs_run=len(epochs))


def recalibrate(run_dir: str | Path, shards_dir: str | Path, export_version: int = 1,
                export_tta: str = DEFAULT_TTA) -> TrainResult:
    """``fusion-train --export-only --recalibrate``: calibrate a finished run's thresholds again
    on the val split of `shards_dir` (type and mask thresholds: a run from before mask
    calibration gets one), rewrite ``RUN/thresholds.json`` and ``RUN/metrics.json``, export.

    Raises:
      TrainError: no finished run there, or shards it cannot read.
    """
    run_dir, shards_dir = Path(run_dir), Path(shards_dir)
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None or not (run_dir / CONFIG_FILE).is_file():
        raise TrainError(f"{run_dir} is not a finished fusion-train run (it needs {CONFIG_FILE} and "
                         f"best.keras or model.keras)")
    cfg = RunConfig.load(run_dir / CONFIG_FILE)
    manifest = check_inputs(shards_dir, cfg)
    model = keras.saving.load_model(checkpoint, compile=False)
    val = val_reader(shards_dir, cfg)
    try:
        epochs_run = int(json.loads((run_dir / METRICS_FILE).read_text())["epochs_run"])
    except (OSError, ValueError, KeyError, TypeError):
        epochs_run = 0  # unknown: metrics.json missing or from another version
    return finish_run(model, val, run_dir, cfg, manifest, range(epochs_run), export=True,
                      export_version=export_version, shards_dir=shards_dir, export_tta=export_tta)
