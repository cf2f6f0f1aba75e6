"""`fusion-build`, `fusion-synth`, `fusion-verify`: thin click layers over the library.

Library errors become `click.ClickException` here and nowhere else. Exit status: 0 done (even
with counted skips), 1 failed / nothing written / problems found, 2 bad usage or a drop that
cannot be read at all (missing root or labels file; nothing is written then).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import click

# TensorFlow's C++ start-up lines (oneDNN, CUDA probing) say nothing a user can act on.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from data_build import splits, windows
from data_build.cases import DropError
from data_build.choices import DEFAULT_SHARD_SIZE, SOURCES, WINDOW_SET_NAMES
from data_build.synth import difficulty as synth_difficulty

#: Warnings printed in full in the build summary (the manifest keeps them all).
SUMMARY_WARNINGS = 10
#: `fusion-build --engine`: the local process pool (default) or an Apache Beam pipeline.
ENGINES = ("local", "beam")


class DropUnreadable(click.ClickException):
    """Missing root or labels file: exit status 2, like a usage error."""

    exit_code = 2


# Options shared by several commands, defined once.
OVERWRITE = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the output of a previous run in that folder.",
)
PROGRESS = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show progress bars."
)


def _window_overrides(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    overrides: dict[str, windows.Window] = {}
    for text in values:
        try:
            name, window = windows.parse_window_override(text)
        except ValueError as err:
            raise click.BadParameter(str(err), ctx, param) from None
        overrides[name] = window
    return overrides


def _fractions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        return splits.parse_fractions(value)
    except splits.SplitError as err:
        raise click.BadParameter(str(err), ctx, param) from None


def _path_or_url(ctx: click.Context, param: click.Parameter, value: str) -> Path | str:
    """ROOT or --out as a `Path`, or as the URL string it is (``Path`` folds ``gs://b`` to ``gs:/b``)."""
    from data_build import locations

    return locations.path_or_url(value)


def _write_failed(err: OSError, out: Path) -> str:
    """One line for an OS error while building into `out`: what failed and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    return (f"cannot write the build to --out {out}: {err.strerror or err}{where}. Pick a folder "
            "you can write with enough free space (or free some), then rerun with --resume.")


def _summarise_build(report: Any) -> None:
    click.echo(f"Wrote {report.examples} slices to {report.out} "
               f"({report.shards_written} shards written, {report.shards_reused} reused).")
    for split, counts in report.counts.items():
        click.echo(f"  {split:5s}: {counts['slices']:7d} slices, {counts['with_mask']:7d} with masks")
    by_reason = report.skips_by_reason
    if by_reason:
        click.echo(f"Skipped or masks left unknown: {len(report.skips)}")
        for reason, n in by_reason.items():
            click.echo(f"  {reason}: {n}")
    else:
        click.echo("Skipped: none")
    if report.warnings:
        click.echo(f"Warnings: {len(report.warnings)} (all listed in the manifest)")
        for warning in report.warnings[:SUMMARY_WARNINGS]:
            click.echo(f"  {warning}")
        if len(report.warnings) > SUMMARY_WARNINGS:
            click.echo(f"  ... and {len(report.warnings) - SUMMARY_WARNINGS} more")
    click.echo(f"Manifest: {report.manifest_path}")


def _default_workers() -> int:
    """The local engine's default --workers (all cores this process may use)."""
    from data_build import records

    return records._available_cores()


def _build_with_beam(
    root: Path | str, out: Path | str, source: str, workers: int | None, shard_size: int, resume: bool,
    overwrite: bool, strict: bool, window_overrides: dict, fractions: tuple[float, float, float],
    split_method: str, progress: bool, beam_options: str,
) -> Any:
    """`beam_engine.build`; usage problems (no Beam, bad options, local-only flags) exit 2."""
    from data_build import beam_engine

    if resume or strict:
        flag = "--resume" if resume else "--strict"
        raise click.UsageError(
            f"{flag} works with --engine local only (a Beam build is all or nothing, and has no "
            "'first' bad input); rerun the Beam build with --overwrite, or use --engine local"
        )
    # Beam's log lines (each worker start, optional GCP clients it did not find, a failed
    # bundle's traceback) say nothing a fusion-build user can act on: a failure becomes one
    # line with its cause (`beam_engine._run`). DirectRunner's worker processes log on their own.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.CRITICAL)
    try:
        try:
            beam_engine.require_beam()
            options = beam_engine.pipeline_options(beam_options, workers or _default_workers())
            beam_engine.check_location(root, "ROOT")
            beam_engine.check_location(out, "--out")
        except beam_engine.records.BuildError as err:
            raise click.UsageError(str(err)) from None
        if progress:  # Beam runs the conversion out of sight: say where, and that no bar follows
            click.echo(f"Apache Beam ({beam_engine.describe(options)}): discovery here, then the "
                       "pipeline (no per-slice progress bar; the runner's own UI shows it).")
        return beam_engine.build(root, out, source=source, workers=workers, shard_size=shard_size,
                                 overwrite=overwrite, presets=window_overrides, fractions=fractions,
                                 split_method=split_method, progress=progress,
                                 beam_options=beam_options)
    finally:
        root_logger.setLevel(level)  # a caller in the same process (tests) keeps its logging


@click.command(
    epilog="\b\nExamples:\n  fusion-build /data/drop --out shards --workers 8\n"
    "  fusion-build /data/drop --out shards --resume    # finish an interrupted build\n"
    "  fusion-build /data/drop --out hu-shards --source dicom\n"
    "  fusion-build /data/drop --out shards --engine beam --workers 8   # Beam DirectRunner\n"
    "  fusion-build /data/drop --out gs://bucket/shards --engine beam   # needs apache-beam[gcp]\n"
    "  fusion-build /data/drop --out shards --engine beam --beam-options \"--runner=FlinkRunner "
    "--flink_master=host:8081 --environment_type=LOOPBACK\"",
)
@click.argument("root", type=click.Path(file_okay=False), callback=_path_or_url)
@click.option(
    "--out", type=click.Path(file_okay=False), default="tfrecords", callback=_path_or_url,
    show_default=True, metavar="FOLDER|URL",
    help="Folder for the shards and manifest.json; with --engine beam also a URL Beam can write "
         "(gs://bucket/shards, s3://...). --engine local writes to a local folder only.",
)
@click.option(
    "--source", type=click.Choice(SOURCES), default=SOURCES[0], show_default=True,
    help="Pixels to store: the four window renders, or HU from raw DICOM "
    "(auto: renders when ROOT/renders exists).",
)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Conversion processes [default: all cores].")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Slices per shard (1024 full-size slices make ~100-250 MB).")
@click.option("--resume", is_flag=True,
              help="Finish an interrupted build: keep shards whose checksum matches, redo the rest.")
@OVERWRITE
@click.option("--strict", is_flag=True,
              help="Stop at the first bad input with its reason instead of skipping it "
                   "(slices listed in flagged.txt are intended exclusions, not bad input).")
@click.option("--window", "window_overrides", multiple=True, callback=_window_overrides,
              metavar="NAME=LEVEL,WIDTH",
              help="Override a window preset in HU (repeatable), e.g. subdural_window=75,215.")
@click.option("--split-fractions", default=",".join(f"{f:g}" for f in splits.DEFAULT_FRACTIONS), show_default=True,
              callback=_fractions,
              help="TRAIN,VAL,TEST fractions of patients (else studies, else slices).")
@click.option("--split-method", type=click.Choice(splits.METHODS), default=splits.DEFAULT_METHOD,
              show_default=True,
              help="stratified: balance hemorrhage types, and patients with several types, "
                   "across splits (small drops); hash: a patient's split never changes as the "
                   "drop grows.")
@click.option("--engine", type=click.Choice(ENGINES), default=ENGINES[0], show_default=True,
              help="local: this machine's process pool. beam: an Apache Beam pipeline, the same "
                   "shards byte for byte (needs pip install 'fusion[beam]'; no --resume/--strict).")
@click.option("--beam-options", default="", metavar="'--NAME=VALUE ...'",
              help="Beam pipeline options for --engine beam [default: --runner=DirectRunner "
                   "--direct_running_mode=multi_processing --direct_num_workers=WORKERS].")
@PROGRESS
def build(
    root: Path | str,
    out: Path | str,
    source: str,
    workers: int | None,
    shard_size: int,
    resume: bool,
    overwrite: bool,
    strict: bool,
    window_overrides: dict,
    split_fractions: tuple[float, float, float],
    split_method: str,
    engine: str,
    beam_options: str,
    progress: bool,
) -> None:
    """Convert a hemorrhage drop at ROOT into sharded TFRecords for training.

    Reads renders/<type>/<window>/<ID>.jpg (or raw DICOM with --source dicom),
    hemorrhage-labels.csv, flagged.txt and the segmentation CSVs; splits by
    patient into train/val/test, balancing hemorrhage types; writes <split>-NNNNN-of-NNNNN.tfrecord shards
    and a manifest.json with counts, checksums and every skipped input.
    Bad inputs are skipped and counted (see the summary), unless --strict.
    ROOT and --out are local folders (or mounts), or with --engine beam also URLs
    (gs://, s3://, any scheme Apache Beam can read and write).
    """
    from data_build import records

    if beam_options and engine != "beam":  # silently ignored options would mislead
        raise click.UsageError("--beam-options applies to --engine beam only; add --engine beam "
                               "or drop --beam-options")
    if isinstance(root, str) and engine != "beam":  # a URL (`_path_or_url`)
        raise click.UsageError(f"ROOT {root} is a URL; --engine local reads a local folder (or a mount) "
                               "only: add --engine beam (pip install 'fusion[beam]') or give a local ROOT")
    if isinstance(out, str) and engine != "beam":  # a URL (`_path_or_url`)
        raise click.UsageError(f"--out {out} is a URL; --engine local writes to a local folder only: "
                               "add --engine beam (pip install 'fusion[beam]') or give a local --out")
    try:
        if engine == "beam":
            report = _build_with_beam(root, out, source, workers, shard_size, resume, overwrite,
                                      strict, window_overrides, split_fractions, split_method,
                                      progress, beam_options)
        else:
            report = records.build(
                root, out, source=source, workers=workers, shard_size=shard_size, resume=resume,
                overwrite=overwrite, strict=strict, presets=window_overrides,
                fractions=split_fractions, split_method=split_method, progress=progress,
            )
    except DropError as err:
        raise DropUnreadable(str(err)) from None
    except (records.BuildError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    except OSError as err:  # unwritable or invalid --out, a full disk
        raise click.ClickException(_write_failed(err, out)) from None
    _summarise_build(report)
    if report.examples == 0:
        raise click.ClickException(
            "nothing could be written: every slice was skipped (reasons above, details in the "
            "manifest's 'skipped')"
        )


@click.command(epilog="\b\nExample:\n  fusion-synth demo-drop --patients 4 --size 128\n"
               "  fusion-build demo-drop --out demo-shards")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--patients", type=click.IntRange(min=1), default=12, show_default=True,
              help="Synthetic patients (folder types cycle through all seven).")
@click.option("--slices-per-patient", type=click.IntRange(min=1), default=6, show_default=True,
              help="Consecutive slices per patient.")
@click.option("--size", type=click.IntRange(min=16), default=512, show_default=True,
              help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Fixes every byte written.")
@click.option("--no-dicoms", is_flag=True, help="Write renders only, no raw DICOM slices.")
@click.option("--no-broken", is_flag=True,
              help="Do not plant the broken inputs (corrupt JPEG, missing window, bad polygon...).")
@click.option("--window-set", type=click.Choice(WINDOW_SET_NAMES), default=WINDOW_SET_NAMES[0],
              show_default=True,
              help="Window folder names: the real drop's (brain_window) or the brief's (bone_window).")
@click.option("--difficulty", type=click.Choice(synth_difficulty.DIFFICULTIES),
              default=synth_difficulty.DEFAULT_DIFFICULTY, show_default=True,
              help="Phantom setting. 'real': calibrated to real head CT (bleeds ~20 HU above brain, "
              "small and thin ones, iso-dense subdurals, calcifications, skull base, streaks, "
              "varied pose, field of view and kernel; docs/data.md). 'easy': the original bright, "
              "mid-sized bleeds on a clean head, byte-identical for a seed (fast tests).")
@OVERWRITE
@PROGRESS
def synth(
    out: Path,
    patients: int,
    slices_per_patient: int,
    size: int,
    seed: int,
    no_dicoms: bool,
    no_broken: bool,
    window_set: str,
    difficulty: str,
    overwrite: bool,
    progress: bool,
) -> None:
    """Write a synthetic drop at OUT in exactly the real drop's layout.

    Head phantoms in HU with each hemorrhage type, rendered through the four
    windows, with labels, flagged list, segmentation CSVs (every polygon form)
    and DICOM slices; by default a few broken inputs are planted so that
    fusion-build's skip handling can be seen. No real patient data.
    """
    from data_build.synth import writer as synth_module

    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise click.ClickException(
                f"{out} exists and is not empty; use --overwrite to replace it or pick another OUT"
            )
        if not (out / "hemorrhage-labels.csv").exists():
            raise click.ClickException(
                f"{out} does not look like a drop (no hemorrhage-labels.csv); refusing to delete it"
            )
        shutil.rmtree(out)
    try:
        summary = synth_module.write_synthetic_drop(
            out, n_patients=patients, slices_per_patient=slices_per_patient, size=size,
            seed=seed, dicoms=not no_dicoms, broken=not no_broken, window_set=window_set,
            progress=progress, difficulty=difficulty,
        )
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"Synthetic drop ({summary.difficulty} phantom) written to {out}: {summary.n_slices} slices "
        f"({summary.n_with_polygons} with polygons), {summary.n_renders} renders, "
        f"{summary.n_dicoms} DICOMs, {summary.n_label_rows} label rows, "
        f"{len(summary.flagged)} flagged"
    )
    if summary.broken:
        click.echo("Planted broken inputs (fusion-build skips and counts them):")
        for item in summary.broken:
            click.echo(f"  {item.kind}: {item.id}")
    click.echo(f"Next: fusion-build {out} --out {out}-shards")


@click.command(epilog="\b\nExample:\n  fusion-verify shards")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@PROGRESS
def verify(out: Path, progress: bool) -> None:
    """Check the shards in OUT against their manifest.json.

    Re-reads every shard: checksum, size, record count, that every record parses
    with the schema and that its images and mask decode. Exit status 1 on any problem.
    """
    from data_build import records

    try:
        report = records.verify(out, progress=progress)
    except records.ManifestError as err:
        raise click.ClickException(str(err)) from None
    if report.ok:
        click.echo(f"ok: {report.shards} shards, {report.examples} records match {out}/manifest.json")
        return
    click.echo(f"{len(report.problems)} problems in {out}:")
    for problem in report.problems[:100]:
        click.echo(f"  {problem}")
    if len(report.problems) > 100:
        click.echo(f"  ... and {len(report.problems) - 100} more")
    raise SystemExit(1)
