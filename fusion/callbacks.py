"""The callbacks of a training run: backup, best checkpoint, history, TensorBoard, LR, early stop."""
from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import keras

from fusion import backend
from fusion.config import RunConfig

log = logging.getLogger(__name__)

EPOCH_SECONDS = "epoch_seconds"  # the history.csv column `EpochTimer` writes


def make_callbacks(run_dir: Path, cfg: RunConfig, resume: bool, verbose: int) -> list[keras.callbacks.Callback]:
    """Backup (first, so an interrupted epoch is never half-saved, and it saves the raw weights),
    LR schedule and early stop, the weight average swapped in (``train.ema_momentum``), the best
    checkpoint, the epoch's wall time, logs; the checkpoint, the plateau schedule and early
    stopping follow ``cfg.train.monitor``."""
    monitor = cfg.train.monitor
    callbacks: list[keras.callbacks.Callback | None] = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        *schedule_and_stop(cfg, verbose),
        # Before the checkpoint, so best.keras holds the averaged weights.
        None if cfg.train.ema_momentum is None else AveragedWeights(),
        keras.callbacks.ModelCheckpoint(
            # mode "min": every monitor is a loss, and Keras cannot infer it for a head's loss.
            str(run_dir / "best.keras"), monitor=monitor, mode="min", save_best_only=True, verbose=0,
            # On resume, only a better epoch than those already logged may replace best.keras.
            initial_value_threshold=best_logged(run_dir / "history.csv", monitor) if resume else None,
        ),
        # Before the logger, so history.csv has the column (after the backup and checkpoint,
        # so the epoch's time includes saving them).
        EpochTimer() if _history_takes_time(run_dir / "history.csv", resume) else None,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
        tensorboard_callback(run_dir / "logs"),
        keras.callbacks.TerminateOnNaN(),
    ]
    return [c for c in callbacks if c is not None]  # no TensorBoard off TensorFlow


def schedule_and_stop(cfg: RunConfig, verbose: int) -> list[keras.callbacks.Callback]:
    """The plateau schedule and early stopping on ``cfg.train.monitor`` (they only read logs)."""
    monitor = cfg.train.monitor
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.train.schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, mode="min", factor=0.5, patience=max(1, cfg.train.patience // 3),
                verbose=verbose,
            )
        )
    if cfg.train.patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=cfg.train.patience,
                                          restore_best_weights=False)
        )
    return callbacks


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Validation and the callbacks after this one see the optimizer's moving average of the
    weights; training steps the raw weights (``train.ema_momentum``).

    Keras' `SwapEMAWeights(swap_on_epoch=True)` leaves the average in the model only when the
    run ends at its last epoch: after an early stop, the optimizer's final step would write the
    raw weights back over it. Early stopping runs before this callback (`make_callbacks`), so
    ``stop_training`` already says whether this epoch is the last.
    """

    def __init__(self) -> None:
        super().__init__(swap_on_epoch=True)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        if self.model.stop_training and epoch != self.params["epochs"] - 1:
            self._finalize_ema_values()


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` to the epoch's logs: wall seconds from the epoch's start to its end
    (training, validation, and the callbacks before this one), so RUN/history.csv says what an
    epoch costs. The first epoch of a run also pays for tracing and compiling."""

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and self._start is not None:
            logs[EPOCH_SECONDS] = time.perf_counter() - self._start


def _history_takes_time(history_csv: Path, resume: bool) -> bool:
    """False when a resumed run appends to a history.csv written without ``epoch_seconds``:
    CSVLogger keeps the old header, and a new column would shift the rows under it."""
    if not resume:
        return True
    try:
        with open(history_csv, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except OSError:
        return True
    return header is None or EPOCH_SECONDS in header


def best_logged(history_csv: Path, key: str = "val_loss") -> float | None:
    """Lowest `key` in a CSVLogger file, None when there is none."""
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
        import tensorflow as tf  # this callback only runs on the TensorFlow backend

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(str(self.log_dir / name))
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        import tensorflow as tf

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


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback | None:
    """Keras' TensorBoard callback when tensorboard is installed, else `EpochSummaries`.

    None on JAX and PyTorch: both write events through TensorFlow's summary ops (Keras'
    TensorBoard callback imports ``tensorflow.summary`` on every backend), and a run on those
    backends must not import TensorFlow. RUN/history.csv holds the same per-epoch numbers.
    """
    if not backend.uses_tensorflow():
        log.info("TensorBoard events skipped on the %s backend (they need TensorFlow); "
                 "RUN/history.csv holds the per-epoch metrics", backend.current_backend())
        return None
    try:
        import tensorboard  # noqa: F401  (only checking it is there)
    except ImportError:
        return EpochSummaries(log_dir)
    return keras.callbacks.TensorBoard(str(log_dir), write_graph=False, profile_batch=0)


class EpochCounter(keras.callbacks.Callback):
    """Records the epoch indices fitted in this call (fewer than asked after resume or stop)."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.epochs.append(epoch)
