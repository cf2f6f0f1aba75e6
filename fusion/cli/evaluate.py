"""`fusion-evaluate MODEL SHARDS --out REPORT`: held-out metrics and an HTML report.

On ``--backend tensorflow`` MODEL's SavedModel (``RUN/export/<N>``) is scored over tf.data; on
jax or torch its ``RUN/model.keras`` (`fusion.keras_predictor`) over `fusion.reader`, with no
TensorFlow import. Keep keras and TensorFlow imports out of this module's top: the backend is
selected in `main` (`start_backend`), before anything imports keras.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click

from data_build.errors import DataBuildError
from data_build.manifest import Manifest, ManifestError
from fusion.backend import BACKENDS, BackendError, default_backend, select_backend
from fusion.cli.train import Refused
from fusion.errors import FusionError
from fusion.inference import DEFAULT_TTA, TTA_MODES

log = logging.getLogger(__name__)

TTA_OPTION = click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    default=DEFAULT_TTA,
    show_default=True,
    help="Test-time augmentation: 'flip' averages the model's outputs on the image and on its "
         "left-right mirror (two passes; it raised held-out Dice in 31 of 40 proxy runs, "
         "docs/benchmarks.md), what fusion-train's SavedModel runs in its graph by default; 'none' is "
         "one pass (a run whose export runs the mirror in its graph is read from its model.keras).",
)
BATCH_OPTION = click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
    help="Slices per model call.",
)
OVERWRITE_OPTION = click.option(
    "--overwrite", is_flag=True, help="Replace the outputs if the folder already holds them."
)
BACKEND_OPTION = click.option(
    "--backend", type=click.Choice(BACKENDS), default=None,
    help="Keras backend [default: $KERAS_BACKEND, else tensorflow]. tensorflow runs the run's "
         "SavedModel (RUN/export), or RUN/model.keras when the run has no export; jax and torch "
         "run RUN/model.keras (or a .keras file given as MODEL) without importing TensorFlow.",
)


def start_backend(name: str | None) -> str:
    """Select the Keras backend (before anything imports keras) and keep Keras off TensorFlow
    when it is not the backend. Returns the backend's name.

    Raises:
      Refused: unknown backend, its package missing, or keras loaded on another backend.
    """
    try:
        chosen = select_backend(name or default_backend())
    except BackendError as err:
        raise Refused(str(err)) from None
    from fusion.backend import keep_keras_off_tensorflow

    keep_keras_off_tensorflow()
    return chosen


def read_errors(backend: str) -> tuple[type[BaseException], ...]:
    """tf.data's lazy read errors on TensorFlow; none elsewhere (`fusion.reader` raises
    ValueErrors naming the shard and offset)."""
    if backend != "tensorflow":
        return ()
    import tensorflow as tf

    return (tf.errors.OpError,)


def _manifest(shards: Path) -> Manifest | None:
    """The shards' manifest, None when unreadable (reading the split then says what is wrong)."""
    try:
        return Manifest.load(shards)
    except ManifestError:
        return None


def _load_batches(shards: Path, split: str, image_size: int, batch_size: int) -> Iterable[Any]:
    """Reader batches of one split, no shuffle, no augmentation: `fusion.reader.ShardSequence`
    dicts, the reader training uses, on every backend."""
    from fusion.reader import ShardSequence

    return ShardSequence(shards, split, image_size=image_size, batch_size=batch_size, as_dicts=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("shards", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="Split of the shards to score.")
@click.option(
    "--out", "out", type=click.Path(path_type=Path), required=True,
    help="Folder for metrics.json, report.html and predictions.csv.",
)
@TTA_OPTION
@BATCH_OPTION
@click.option(
    "--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
    help="Bootstrap resamples for the 95 % intervals (0: none).",
)
@click.option(
    "--image-size", type=click.IntRange(min=8), default=None,
    help="Size the slices are read at; default: the model's input size, else the run "
    "config's image_size, else the manifest's.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@BACKEND_OPTION
@OVERWRITE_OPTION
def main(
    model: Path, shards: Path, split: str, out: Path, tta: str, batch_size: int, bootstrap: int,
    image_size: int | None, seed: int, backend: str | None, overwrite: bool,
) -> None:
    """Score MODEL (a run folder, its export/ SavedModel, or a .keras file) on a split of SHARDS.

    Writes OUT/metrics.json (per-type AUC, AUPRC, sensitivity, specificity and F1 at the
    run's calibrated thresholds, macro averages, "multi", Dice/IoU, area agreement, bootstrap
    95 % intervals), OUT/report.html (one self-contained file) and OUT/predictions.csv.
    """
    from tqdm import tqdm

    backend = start_backend(backend)
    from fusion.evaluate import evaluate
    from fusion.keras_predictor import open_model
    from fusion.shard_errors import describe_read_error

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (out / "metrics.json").exists() and not overwrite:
        raise click.ClickException(
            f"{out / 'metrics.json'} already exists; pass --overwrite or choose another --out"
        )
    try:
        predictor = open_model(model, backend, tta)
    except FusionError as err:
        raise click.ClickException(str(err)) from err
    manifest = _manifest(shards)
    size = image_size or predictor.image_size or (manifest.image_side if manifest else None)
    if size is None:
        raise click.ClickException(
            "cannot tell the image size: the model accepts any size and neither the run "
            "config nor the manifest names one; pass --image-size"
        )
    total = manifest.split_count(split) if manifest else None
    try:
        batches = _load_batches(shards, split, size, batch_size)
        with tqdm(total=total, unit="slice", desc=f"evaluate {split}") as bar:
            result = evaluate(
                predictor, batches, out, model_name=str(model), shards=str(shards), split=split,
                tta=tta, batch_size=batch_size, n_boot=bootstrap, seed=seed,
                progress=bar.update,
            )
    except (FusionError, DataBuildError, ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err
    except read_errors(backend) as err:  # tf.data: raised lazily while reading (corrupt or missing shard)
        raise click.ClickException(describe_read_error(shards, err.message, (split,))) from err
    m = result.metrics
    cls = m.get("classification", {})
    macro = (cls.get("macro_types") or {}).get("auc")
    dice = ((m.get("segmentation") or {}).get("dice") or {}).get("mean")
    click.echo(
        f"{m['n_slices']} slices scored; macro AUC (5 types) "
        f"{'n/a' if macro is None else f'{macro:.3f}'}; mean Dice "
        f"{'n/a' if dice is None else f'{dice:.3f}'}"
    )
    click.echo(f"wrote {result.metrics_path}, {result.report_path}, {result.predictions_path}")


if __name__ == "__main__":  # pragma: no cover
    main()
