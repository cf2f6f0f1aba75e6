"""``fusion-train SHARDS --out RUN``: train, calibrate, evaluate on val and export.

A thin click layer over `fusion.train.train`: it builds the run config (preset, then
``--config`` file, then single options), and turns library errors into usage errors (exit 2).
It selects the Keras backend (``--backend``) before anything imports keras, so keep keras and
TensorFlow imports out of this module's top and out of `fusion.config`.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from data_build.errors import DataBuildError
from fusion.backend import BACKENDS, BackendError, default_backend, select_backend
from fusion.config import (
    BLOCKS,
    CLASS_POOLINGS,
    DEFAULT_PRESET,
    FUSION_STRIDES,
    FUSIONS,
    NORMS,
    PRESETS,
    STRATEGIES,
    ConfigError,
    RunConfig,
    preset,
)
from fusion.errors import FusionError, TrainError
from fusion.inference import DEFAULT_TTA, TTA_MODES
from fusion.run_folder import EXPORT_NOTE


class Refused(click.ClickException):
    """A one-line ``Error: ...`` with exit status 2 (a setting this machine cannot honour)."""

    exit_code = 2


def data_loss_error(backend: str) -> type[BaseException]:
    """TensorFlow's error for a damaged shard met mid-epoch by tf.data; imports TensorFlow only on
    its own backend (`fusion.reader` raises `CorruptRecordError` instead)."""
    if backend != "tensorflow":
        from data_build.tfrecord import CorruptRecordError

        return CorruptRecordError
    import tensorflow as tf

    return tf.errors.DataLossError


def build_config(
    preset_name: str,
    config_file: Path | None,
    epochs: int | None,
    image_size: int | None,
    batch_size: int | None,
    seed: int | None,
    learning_rate: float | None,
    width: int | None,
    fusion: str | None,
    class_pooling: str | None = None,
    norm: str | None = None,
    fusion_stride: int | None = None,
    block: str | None = None,
    deep_supervision: int | None = None,
) -> RunConfig:
    """Preset < config file < command-line options.

    Raises:
      ConfigError: unknown preset, unreadable config file or an invalid value.
    """
    cfg = preset(preset_name)
    if config_file is not None:
        cfg = RunConfig.load(config_file)
    # Only the options given on the command line override the preset or config file.
    model = {k: v for k, v in {"image_size": image_size, "width": width, "fusion": fusion,
                               "class_pooling": class_pooling, "norm": norm,
                               "fusion_stride": fusion_stride, "block": block,
                               "deep_supervision": deep_supervision}.items() if v is not None}
    train = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "seed": seed,
                               "learning_rate": learning_rate}.items() if v is not None}
    cfg = cfg.replace(model=model, train=train)
    if fusion_stride not in (None, 1) and cfg.model.fusion != "attention":
        # A config file may carry an unused fusion_stride; a flag given by hand must act.
        raise ConfigError(
            f"--fusion-stride {fusion_stride} sets the window attention's resolution, but this run "
            f"uses {cfg.model.fusion} fusion (the {cfg.preset} preset's); add --fusion attention, or "
            f"start from --preset fusion-attention")
    return cfg


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shards", type=click.Path(path_type=Path))
@click.option("--out", "run_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Run folder (config.json, best.keras, metrics.json, export/ ...).")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Run config JSON (as written to RUN/config.json); replaces the preset.")
# Not a click.Choice: `fusion.config.preset` names the known presets in its own message.
@click.option("--preset", "preset_name", default=DEFAULT_PRESET, show_default=True,
              help=f"Starting config: {', '.join(PRESETS)} (docs/benchmarks.md compares them).")
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs.")
@click.option("--image-size", type=click.IntRange(min=1),
              help="Training size in pixels (multiple of the encoder stride).")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Global batch size [preset's: fusion 4, chosen on ~60 training slices; raise it "
                   "for a large drop on an accelerator].")
@click.option("--seed", type=int, help="Seed of weights, shuffling and augmentation.")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), help="Peak AdamW learning rate.")
@click.option("--width", type=click.IntRange(min=1), help="Encoder width (channels of the first stage).")
@click.option("--fusion", type=click.Choice(FUSIONS),
              help="Window fusion: early (the windows stacked as channels; the fusion preset's) or "
                   "attention (per-pixel weights over the windows; fusion-attention's: higher type AUC "
                   "on the proxy, ~1.3x the step).")
@click.option("--fusion-stride", type=click.Choice([str(s) for s in FUSION_STRIDES]),
              callback=lambda _ctx, _param, value: None if value is None else int(value),
              help="With --fusion attention: run the window attention at 1/N resolution (1: full; 2: a "
                   "quarter of the pixels, with a full-resolution stem beside it): cheaper per step "
                   "(docs/benchmarks.md, \"Step cost of the candidates\").")
@click.option("--norm", type=click.Choice(NORMS),
              help="Normalisation layers: group (GroupNorm, the fusion preset's) or batch (BatchNorm: "
                   "cheaper per step; its moving statistics average ~10 steps, model.bn_momentum 0.9 "
                   "in a --config file; Keras' 0.99 lagged the weights on short runs and emptied every "
                   "mask on the low-data proxy; docs/benchmarks.md).")
@click.option("--block", type=click.Choice(BLOCKS),
              help="Encoder-decoder blocks: residual (pre-activation, SiLU) or plain (conv-norm-ReLU "
                   "twice, max-pool down: the plain U-Net's); docs/benchmarks.md compares them.")
@click.option("--deep-supervision", type=click.IntRange(min=0), metavar="K",
              help="Deep supervision: K auxiliary mask heads on the decoder at strides 2, 4, ..., 2**K "
                   "(0: off; the fusion preset uses 2, the other presets 0). Training-only: dropped "
                   "before calibration and export. docs/benchmarks.md: ahead on 9 of 12 low-data "
                   "proxy folds and seeds.")
@click.option("--class-pooling", type=click.Choice(CLASS_POOLINGS),
              help="How the class head pools: global; also one attention map per label (attention; "
                   "docs/benchmarks.md: no gain on the synthetic demo); or also the decoder's features "
                   "under the model's own mask (mask: meant for small bleeds; on the proxy it lowered macro AUC, "
                   "docs/benchmarks.md).")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Keras backend [default: $KERAS_BACKEND, else tensorflow]. jax and torch read shards "
                   "without TensorFlow and write RUN/model.keras but no SavedModel (export later with "
                   "--export-only on a machine with TensorFlow).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Decoded cache folder on a local disk: train and val are decoded once, before the first "
                   "epoch, to uint8 at the training size (N x S x S x 5 bytes, printed before it is built; "
                   "refused if the disk cannot hold it) and every epoch reads them memory-mapped. Reused "
                   "while the shards, split, size and reader match, rebuilt otherwise. Any backend.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=STRATEGIES[0], show_default=True,
              help="tf.distribute strategy (mirrored: all local GPUs; tensorflow backend only).")
@click.option("--resume", is_flag=True, help="Continue a killed run from RUN/backup (uses RUN/config.json).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--no-export", is_flag=True, help="Skip RUN/model.keras and RUN/export.")
@click.option("--export-only", is_flag=True, help="Only re-export a finished run (best.keras + thresholds.json).")
@click.option("--recalibrate", is_flag=True,
              help="With --export-only: first calibrate the run's thresholds again on the val split of "
                   "SHARDS (per-type cuts, and the mask threshold, which runs trained before it existed "
                   "lack: they cut masks at 0.5), rewriting RUN/thresholds.json and RUN/metrics.json.")
@click.option("--export-version", type=click.IntRange(min=1), default=1, show_default=True,
              help="Servable version: the SavedModel goes to RUN/export/<N>/, the layout TF Serving "
                   "loads (--model_base_path=RUN/export serves the highest N).")
@click.option("--export-tta", type=click.Choice(TTA_MODES), default=None,
              help=f"Test-time augmentation inside the SavedModel's signatures: flip runs the model on "
                   f"each image and its left-right mirror and averages them (what fusion-evaluate and "
                   f"fusion-predict measure by default, so TF Serving returns the figures you "
                   f"measured); none is one pass, ~0.6x the latency. [default: {DEFAULT_TTA} when "
                   f"training; with --export-only, what the run's latest export runs (one pass for "
                   f"exports from before this option), so a re-export serves what it did]")
@click.option("--quiet", is_flag=True, help="One line per epoch instead of a progress bar.")
def main(
    shards: Path,
    run_dir: Path,
    config_file: Path | None,
    preset_name: str,
    epochs: int | None,
    image_size: int | None,
    batch_size: int | None,
    seed: int | None,
    learning_rate: float | None,
    width: int | None,
    fusion: str | None,
    fusion_stride: int | None,
    norm: str | None,
    block: str | None,
    deep_supervision: int | None,
    class_pooling: str | None,
    backend: str | None,
    cache_dir: Path | None,
    strategy: str,
    resume: bool,
    overwrite: bool,
    no_export: bool,
    export_only: bool,
    recalibrate: bool,
    export_version: int,
    export_tta: str | None,
    quiet: bool,
) -> None:
    """Train the multi-task hemorrhage model on SHARDS (a fusion-build output folder)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:  # before anything imports keras: Keras reads KERAS_BACKEND once
        backend = select_backend(backend or default_backend())
    except BackendError as err:
        raise Refused(str(err)) from None
    if recalibrate and not export_only:
        raise click.UsageError("--recalibrate works on a finished run: add --export-only")
    if export_only and backend != "tensorflow":
        raise Refused(f"--export-only writes a TensorFlow SavedModel: run it with --backend tensorflow "
                      f"on a machine with TensorFlow (this run asked for {backend})")
    try:
        cfg = build_config(preset_name, config_file, epochs, image_size, batch_size, seed,
                           learning_rate, width, fusion, class_pooling, norm, fusion_stride, block,
                           deep_supervision)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None

    # Imported here: keras and TensorFlow take seconds to load and --help should not wait.
    from fusion.shard_errors import describe_read_error
    from fusion.train import check_inputs, train

    data_loss = data_loss_error(backend)
    try:
        if export_only:
            _export_only(run_dir, shards, export_version, export_tta, recalibrate)
            return
        check_inputs(shards, cfg)  # fail fast, before TensorFlow builds anything
        if cache_dir is not None and not resume:  # (a resumed run's size is in RUN/config.json)
            from fusion.decoded_cache import plan_caches

            plan_caches(cache_dir, shards, ("train", "val"), cfg.model.image_size, announce=False)
        result = train(
            shards, run_dir, cfg, resume=resume, overwrite=overwrite, strategy=strategy,
            export=not no_export, verbose=2 if quiet or not sys.stdout.isatty() else 1,
            export_version=export_version, cache_dir=cache_dir, export_tta=export_tta or DEFAULT_TTA,
        )
    except (TrainError, ConfigError) as err:
        raise click.UsageError(str(err)) from None
    except (FusionError, DataBuildError) as err:
        raise click.ClickException(str(err)) from None
    except data_loss as err:  # a damaged shard, met mid-epoch by the reader
        # fusion.reader's error already names the shard, the offset and fusion-verify.
        message = describe_read_error(shards, err.message, ("train", "val")) if backend == "tensorflow" else (
            f"reading the shards of {shards} failed: {err}")
        raise click.ClickException(message) from None
    except OSError as err:  # unwritable or invalid --out, a full disk
        where = f" ({err.filename})" if err.filename else ""
        raise click.ClickException(
            f"cannot write the run to --out {run_dir}: {err.strerror or err}{where}; pick a folder "
            "you can write with enough free space, then rerun (--resume continues a started run)"
        ) from None
    summary = result.metrics.get("summary", {})
    click.echo(f"run {result.run_dir}: {result.epochs_run} epochs; validation " + json.dumps(summary))
    note = run_dir / EXPORT_NOTE
    if not no_export and note.is_file():
        click.echo(note.read_text(encoding="utf-8"), nl=False)


def _export_only(run_dir: Path, shards: Path, export_version: int, export_tta: str | None,
                 recalibrate: bool) -> None:
    """``--export-only`` (and ``--recalibrate``): re-export, or re-pick thresholds, of a finished run."""
    from fusion.export import export_run, reexport_tta

    tta = reexport_tta(run_dir, export_tta)
    if not recalibrate:
        path = export_run(run_dir, shards, version=export_version, tta=tta)
        click.echo(f"exported {path} (test-time augmentation: {tta})")
        return
    from fusion.train import recalibrate as recalibrate_run

    result = recalibrate_run(run_dir, shards, export_version, tta)
    seg = result.metrics.get("segmentation") or {}
    click.echo(f"recalibrated on {shards} (val): mask threshold {seg.get('mask_threshold')}, "
               f"mean val Dice {(seg.get('dice') or {}).get('mean')}; exported "
               f"{run_dir / 'export' / str(export_version)} (test-time augmentation: {tta})")
