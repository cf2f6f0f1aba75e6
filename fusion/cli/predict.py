"""`fusion-predict MODEL INPUTS... --out OUT`: per-slice predictions and per-series volumes."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click

from fusion.cli.evaluate import BACKEND_OPTION, BATCH_OPTION, OVERWRITE_OPTION, TTA_OPTION, start_backend
from fusion.mask_formats import MASK_FORMATS

if TYPE_CHECKING:  # fusion.predict imports numpy and the readers: not before --help
    from fusion.predict import PredictSummary

#: Output sub-folders a previous run may have left, emptied by --overwrite (file kinds listed).
STALE_OUTPUTS = (("masks", "*.png"), ("overlays", "*.png"), ("nifti", "*.nii.gz"), ("seg", "*.dcm"))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True,
    help="Output folder (predictions.csv/json, series.csv/json, skipped.json, masks/, overlays/, "
         "nifti/, seg/ as --mask-format asks).",
)
@click.option(
    "--mask-format", "mask_format", multiple=True, metavar="FORMAT",
    help=f"Mask files to write: {', '.join(MASK_FORMATS)} (repeat the option or give a comma "
         f"list; default png). nifti: nifti/<series>.nii.gz per DICOM series (RAS affine from "
         f"the DICOM geometry) for 3D Slicer / ITK-SNAP; dicom-seg: seg/<series>.dcm, a DICOM "
         f"Segmentation referencing the source slices, for OHIF / PACS. Both need DICOM input "
         f"and pip install 'fusion[clinical]'; other inputs get PNG masks and a warning.",
)
@click.option("--save-probabilities", is_flag=True,
              help="With --mask-format nifti: also nifti/<series>_probabilities.nii.gz (float32).")
@TTA_OPTION
@BATCH_OPTION
@BACKEND_OPTION
@OVERWRITE_OPTION
def main(model: Path, inputs: tuple[Path, ...], out: Path, mask_format: tuple[str, ...],
         save_probabilities: bool, tta: str, batch_size: int, backend: str | None,
         overwrite: bool) -> None:
    """Predict hemorrhage type, area and mask for INPUTS with MODEL (run folder, SavedModel or
    .keras file; --backend jax/torch need no TensorFlow).

    INPUTS are DICOM files or folders (grouped into series by SeriesInstanceUID, split into
    stacks of one orientation and size, ordered along the slice normal; duplicate slices
    dropped, interleaved stacks refused, gaps reported in series.csv), render folders of the
    drop's layout (<type>/<window>/<ID>.jpg), plain PNG/JPEG images (read as a brain-window
    rendering, L40/W80) or .npy arrays ([H, W, 4] windows in [0, 1], or [H, W] HU). Per
    series, the bleed volume in mL and the ABC/2 estimate are written to series.csv.
    Unreadable inputs are listed in skipped.json and skipped; exit status 0 when anything
    was predicted, 1 when nothing could be.
    With --tta flip (the default) on a model that does not flip in its own graph (an export
    from before it did, or a run's model.keras) and no calibrated thresholds next to it,
    decisions are those of the un-flipped image. Masks are written as each series finishes; a long run
    also saves its tables every minute as predictions.partial.csv and the like, so a killed
    run keeps what it finished (the final tables replace them). Folders holding an earlier
    fusion-predict output (fusion_predict.json, or predictions.csv with series.csv) are not
    read as input; they are listed in skipped.json as "fusion-output".
    """
    from tqdm import tqdm

    backend = start_backend(backend)
    from fusion.inference import ModelLoadError, PredictInputError
    from fusion.keras_predictor import open_model
    from fusion.mask_formats import MaskFormatError, parse_formats, require_clinical
    from fusion.predict import PredictError, run_predictions

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        formats = parse_formats(mask_format)
        require_clinical(formats)
    except MaskFormatError as err:
        raise click.UsageError(str(err)) from None
    if save_probabilities and "nifti" not in formats:
        raise click.UsageError("--save-probabilities writes a NIfTI: add --mask-format nifti")
    if (out / "predictions.csv").exists() and not overwrite:
        raise click.ClickException(
            f"{out / 'predictions.csv'} already exists; pass --overwrite or choose another --out"
        )
    try:
        predictor = open_model(model, backend, tta)
    except ModelLoadError as err:
        raise click.ClickException(str(err)) from err
    if overwrite:  # only once the model opened: a wrong MODEL path keeps the earlier output
        _remove_stale_outputs(out)
    headers = tqdm(unit="file", desc="read headers", delay=0.5)
    bar = None

    def set_total(n: int) -> None:
        nonlocal bar
        headers.close()
        bar = tqdm(total=n, unit="slice", desc="predict", delay=0.5)

    def update(n: int) -> None:
        if bar is not None:
            bar.update(n)

    try:
        summary = run_predictions(
            predictor, list(inputs), out, tta=tta, batch_size=batch_size,
            progress=update, on_total=set_total, on_file=headers.update,
            mask_formats=formats, save_probabilities=save_probabilities,
        )
    except (PredictError, PredictInputError, ModelLoadError, OSError) as err:
        raise click.ClickException(str(err)) from err
    finally:
        headers.close()
        if bar is not None:
            bar.close()
    _report(summary, out, predictor.mask_threshold)
    raise SystemExit(summary.exit_code)


def _remove_stale_outputs(out: Path) -> None:
    """--overwrite: masks and overlays of the previous run would otherwise linger next to the new ones."""
    for sub, pattern in STALE_OUTPUTS:
        for stale in (out / sub).glob(pattern) if (out / sub).is_dir() else ():
            stale.unlink()


def _report(summary: PredictSummary, out: Path, mask_threshold: float) -> None:
    """What was predicted, what was skipped and why, and where the files are."""
    reasons = Counter(s.reason for s in summary.skipped)
    detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    click.echo(
        f"{summary.predicted} slices predicted in {summary.series} series; "
        f"{len(summary.skipped)} inputs skipped{f' ({detail})' if detail else ''}"
    )
    for s in summary.skipped[:10]:
        click.echo(f"  skipped {s.path}: {s.reason} {s.detail}", err=True)
    if len(summary.skipped) > 10:
        click.echo(f"  ... and {len(summary.skipped) - 10} more (see skipped.json)", err=True)
    for warning in summary.warnings:
        click.echo(f"warning: {warning}", err=True)
    if summary.exit_code:
        click.echo("nothing could be predicted", err=True)
    else:
        folders = [f"{d}/" for d in ("masks", "overlays", "nifti", "seg") if (out / d).is_dir()]
        click.echo(f"wrote {out}/predictions.csv, series.csv{', ' if folders else ''}"
                   f"{', '.join(folders)}; masks are pixels with bleed probability >= "
                   f"{mask_threshold:.2f} (the model's thresholds.json)")


if __name__ == "__main__":  # pragma: no cover
    main()
