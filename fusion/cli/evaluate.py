"""`fusion-evaluate MODEL SHARDS --out REPORT`: held-out metrics and an HTML report."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click

from data_build.errors import DataBuildError
from data_build.manifest import Manifest, ManifestError
from fusion.errors import FusionError
from fusion.inference import TTA_MODES

log = logging.getLogger(__name__)

TTA_OPTION = click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    default=TTA_MODES[0],
    show_default=True,
    help="Test-time augmentation: 'flip' averages the image and its left-right flip.",
)
BATCH_OPTION = click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
    help="Slices per model call.",
)
OVERWRITE_OPTION = click.option(
    "--overwrite", is_flag=True, help="Replace the outputs if the folder already holds them."
)


def _manifest(shards: Path) -> Manifest | None:
    """The shards' manifest, None when unreadable (reading the split then says what is wrong)."""
    try:
        return Manifest.load(shards)
    except ManifestError:
        return None


def _load_batches(shards: Path, split: str, image_size: int, batch_size: int) -> Iterable[Any]:
    """Reader batches of one split (`fusion.data.make_dataset`, no shuffle, no augmentation)."""
    from fusion.data import make_dataset

    return make_dataset(
        str(shards), split, image_size=image_size, batch_size=batch_size, shuffle=False
    )


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
@OVERWRITE_OPTION
def main(
    model: Path, shards: Path, split: str, out: Path, tta: str, batch_size: int, bootstrap: int,
    image_size: int | None, seed: int, overwrite: bool,
) -> None:
    """Score MODEL (a run folder or its export/ SavedModel) on a split of SHARDS.

    Writes OUT/metrics.json (per-type AUC, AUPRC, sensitivity, specificity and F1 at the
    run's calibrated thresholds, macro averages, "multi", Dice/IoU, area agreement, bootstrap
    95 % intervals), OUT/report.html (one self-contained file) and OUT/predictions.csv.
    """
    import tensorflow as tf
    from tqdm import tqdm

    from fusion.evaluate import evaluate
    from fusion.inference import load_predictor
    from fusion.shard_errors import describe_read_error

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (out / "metrics.json").exists() and not overwrite:
        raise click.ClickException(
            f"{out / 'metrics.json'} already exists; pass --overwrite or choose another --out"
        )
    try:
        predictor = load_predictor(model)
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
    except tf.errors.OpError as err:  # raised lazily while reading (corrupt or missing shard)
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
