"""Predictions on new data: DICOM series, render folders of the drop's layout, plain images.

Inputs (files or folders, folders walked recursively):

- **DICOM** (``.dcm``, or any file without a known image extension that parses as DICOM):
  grouped into series by SeriesInstanceUID and split into geometrically consistent stacks,
  ordered along the slice normal with duplicates dropped and gaps reported (`fusion.series`),
  read as HU (`data_build.dicom.read_hu`) and scored through
  the model's ``serve_hu`` signature. A file without a SeriesInstanceUID is a series of its own.
- **Render folders** (``.../<window>/<ID>.jpg`` with window names of either set, mapped by
  `windows.canonical_window_name`): the four windows of one ID are decoded exactly as the
  training reader decodes renders (bone colour map inverted, `read_render_grey`), stacked in
  `WINDOW_NAMES` order and scored through ``serving_default``. An ID missing a window is
  skipped ("missing-window"). All IDs of one parent folder (e.g. ``renders/epidural``) form
  one "series" without geometry (no volume).
- **Plain images** (a single ``.png``/``.jpg``, grey or RGB; a colour image is taken as
  bone-mapped like the drop's renders, see `read_plain_grey`): taken as a **brain-window
  rendering** (L40/W80, the window radiologists read bleeds in). Its grey level v in [0, 1] is
  mapped back to HU = 0 + 80 v and scored through ``serve_hu``, so each channel gets its own
  window of the recovered HU instead of four copies of one picture. HU outside [0, 80] are
  lost (the bone channel is nearly flat): prefer DICOM or a render folder when you have them.
- **NumPy** ``.npy``: ``[H, W, 4]`` windows in [0, 1] (uint8 0..255 accepted) in
  `WINDOW_NAMES` order through ``serving_default``; ``[H, W]`` or ``[H, W, 1]`` float HU through
  ``serve_hu``.

Outputs in OUT: ``predictions.csv`` / ``predictions.json`` (one row per slice), ``series.csv`` /
``series.json`` (one row per series with bleed volume and ABC/2), ``masks/<name>.png`` (0/255),
``overlays/<name>.png`` and ``skipped.json``; with ``mask_formats`` also ``nifti/<series>.nii.gz``
and ``seg/<series>.dcm`` per DICOM stack (`fusion.mask_formats`), and always the marker
``fusion_predict.json``, by which a later run recognises this folder and does not read it as
input. Every file name is built by `safe_name`, so no id can write outside OUT.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from data_build.files import atomic_write_bytes, atomic_write_text
from data_build.schema import LABEL_NAMES
from fusion import mask_formats as MF
from fusion import series as series_geometry
from fusion.errors import FusionError
from fusion.inference import DEFAULT_TTA, Predictor
from fusion.outputs import write_marker
from fusion.predict_inputs import (
    Inputs,
    SkipRecord,
    SliceInput,
    discover,
    group_series,
    render_inputs,
    single_inputs,
    slices_of_series,
)
from fusion.targets import binary_mask
from fusion.volumes import series_volume

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PredictError(FusionError):
    """Prediction cannot run at all (output folder unusable, no input given)."""


# --- names -----------------------------------------------------------------------------------


def safe_name(text: str, max_len: int = 120) -> str:
    """A file name made from an arbitrary id that cannot leave its folder.

    Keeps letters, digits, ``.``, ``_`` and ``-``; every other run of characters (``/``, ``\\``,
    NUL, spaces, ...) becomes ``_``; leading dots are dropped (no ``..``, no hidden files);
    the result is at most ``max_len`` characters and never empty.
    """
    name = _SAFE.sub("_", text.replace("\x00", "_"))
    name = name.lstrip(".")
    name = re.sub(r"\.{2,}", "_", name)
    name = name[:max_len].strip("_") or "unnamed"
    return name


def inside(root: Path, name: str) -> Path:
    """``root / name`` after checking that it stays inside ``root`` (defence in depth)."""
    path = (root / name).resolve()
    base = root.resolve()
    if path.parent != base:
        raise PredictError(f"refusing to write {name!r}: it would leave {root}")
    return path


class _Names:
    """Unique safe file stems (the same id twice gets ``-2``, ``-3``, ...)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, text: str) -> str:
        base = safe_name(text)
        name, k = base, 1
        while name.lower() in self.used:
            k += 1
            name = f"{base}-{k}"
        self.used.add(name.lower())
        return name


# --- per-slice work ----------------------------------------------------------------------------


def _run_model(
    predictor: Predictor, items: Sequence[SliceInput], batch_size: int, tta: str
) -> list[dict[str, Any]]:
    """Predictions for items of one kind, batching runs of equal size together."""
    results: list[dict[str, Any]] = [{} for _ in items]
    by_shape: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    for i, it in enumerate(items):
        by_shape.setdefault((it.kind, it.array.shape), []).append(i)
    for (kind, _), idx in by_shape.items():
        stack = np.stack([items[i].array for i in idx])
        if kind == "hu":
            out = predictor.predict_hu(stack, batch_size=batch_size, tta=tta)
        else:
            out = predictor.predict(stack, batch_size=batch_size, tta=tta)
        for k, i in enumerate(idx):
            results[i] = {key: value[k] for key, value in out.items()}
    return results


def _overlay(gray: np.ndarray, mask: np.ndarray) -> bytes:
    import cv2

    base = np.repeat(np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)[..., None], 3, -1)
    m = mask.astype(bool)
    base[m] = (0.55 * base[m] + 0.45 * np.array([0, 0, 230])).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(base, contours, -1, (0, 0, 255), 1)
    ok, buf = cv2.imencode(".png", base)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _png(mask: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


@dataclass
class PredictSummary:
    """Counts and output paths of one `run_predictions` call."""

    predicted: int = 0
    series: int = 0
    skipped: list[SkipRecord] = field(default_factory=list)
    out: Path | None = None
    #: Run-level warnings (e.g. NIfTI asked for inputs without DICOM geometry), one per kind.
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when anything was predicted (skips are counted, not fatal), else 1."""
        return 0 if self.predicted > 0 else 1


@dataclass(frozen=True)
class SliceRow:
    """One row of predictions.csv / .json: a slice's probabilities, decisions, areas and files."""

    id: str
    source: str
    path: str
    series_id: str
    index_in_series: int
    probabilities: tuple[float | None, ...]  # LABEL_NAMES order
    decisions: tuple[int, ...]  # LABEL_NAMES order
    area_fraction: float | None
    area_mm2: float | None
    mask_pixels: int | None
    mask_area_mm2: float | None
    pixel_spacing_mm: list[float] | None
    mask_png: str | None
    overlay_png: str | None

    def to_dict(self) -> dict[str, Any]:
        """The table row, columns in `SLICE_COLUMNS` order."""
        head = {k: getattr(self, k) for k in ("id", "source", "path", "series_id", "index_in_series")}
        return {
            **head,
            **{f"p_{n}": p for n, p in zip(LABEL_NAMES, self.probabilities)},
            **{f"decision_{n}": d for n, d in zip(LABEL_NAMES, self.decisions)},
            **{k: getattr(self, k) for k in SLICE_COLUMNS[5 + 2 * len(LABEL_NAMES):]},
        }


#: predictions.csv columns.
SLICE_COLUMNS: tuple[str, ...] = (
    "id", "source", "path", "series_id", "index_in_series",
    *(f"p_{n}" for n in LABEL_NAMES), *(f"decision_{n}" for n in LABEL_NAMES),
    "area_fraction", "area_mm2", "mask_pixels", "mask_area_mm2", "pixel_spacing_mm", "mask_png",
    "overlay_png",
)


@dataclass
class SeriesRow:
    """One row of series.csv / .json: a series' bleed volume, ABC/2, geometry and mask files."""

    series_id: str
    source: str
    n_slices: int
    n_slices_with_bleed: int | None = None
    volume_ml: float | None = None
    abc2_ml: float | None = None
    a_mm: float | None = None
    b_mm: float | None = None
    c_mm: float | None = None
    slice_spacing_mm: float | None = None
    spacing_source: str = "unknown"
    largest_slice_id: str | None = None
    largest_area_mm2: float | None = None
    max_p_any: float | None = None
    n_duplicates_dropped: int = 0
    n_gaps: int = 0
    largest_gap_mm: float | None = None
    mask_nifti: str | None = None
    probabilities_nifti: str | None = None
    mask_seg: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SERIES_COLUMNS}


#: series.csv columns (the fields of `SeriesRow`, in order).
SERIES_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SeriesRow))


@dataclass
class _Run:
    """The state of one `run_predictions` call that every series adds to."""

    predictor: Predictor
    out: Path
    formats: tuple[str, ...]
    batch_size: int
    tta: str
    save_probabilities: bool
    progress: Callable[[int], None] | None
    summary: PredictSummary
    names: _Names = field(default_factory=_Names)
    series_names: _Names = field(default_factory=_Names)
    rows: list[SliceRow] = field(default_factory=list)
    series_rows: list[SeriesRow] = field(default_factory=list)
    no_geometry: list[str] = field(default_factory=list)  # series that could only get PNG masks
    refused: list[str] = field(default_factory=list)  # DICOM series without every mask file asked for


def run_predictions(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: Path,
    *,
    tta: str = DEFAULT_TTA,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_file: Callable[[], None] | None = None,
    checkpoint_s: float = 60.0,
    mask_formats: Sequence[str] = ("png",),
    save_probabilities: bool = False,
) -> PredictSummary:
    """Predict every slice of ``inputs`` and write the outputs into ``out``.

    Masks and overlays are written as each series finishes. The tables are written at the end;
    on a long run they are also saved at most every ``checkpoint_s`` seconds (after a series) as
    ``predictions.partial.csv`` and the like, so a killed run keeps what it finished under
    names that say it is incomplete. The final tables replace the partial ones.

    Args:
      predictor: the loaded model.
      inputs: files and folders (see the module docstring).
      out: output folder (created).
      tta: "none" or "flip".
      batch_size: slices per model call.
      progress: called with the number of slices finished (for a progress bar).
      on_total: called once with the number of candidate slices.
      on_file: called once per input file looked at while reading headers.
      checkpoint_s: seconds between partial table saves (0: after every series).
      mask_formats: any of `fusion.mask_formats.MASK_FORMATS`; NIfTI and DICOM-SEG are made
        for DICOM stacks only (other series get PNG masks and a warning, counted).
      save_probabilities: with "nifti", also write the mask probabilities as a NIfTI.

    Returns:
      A `PredictSummary`; nothing raised for bad inputs (they are in ``skipped``).
    """
    formats = tuple(mask_formats)
    MF.require_clinical(formats)
    if any(Path(p).resolve() == out.resolve() for p in inputs):
        raise PredictError(f"--out {out} is also an input folder: its outputs would be mixed "
                           f"with the inputs; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, {"mask_formats": list(formats), "tta": tta})
    found = discover(inputs, on_file, exclude=[out])
    series_list = group_series(
        found.dicom, lambda path, reason, detail: found.skipped.append(SkipRecord(path, reason, detail))
    )
    if on_total is not None:
        on_total(len(found.dicom) + len(found.renders) + len(found.images) + len(found.arrays))
    run = _Run(predictor, out, formats, batch_size, tta, save_probabilities, progress,
               PredictSummary(out=out))
    last_save = time.monotonic()
    for sid, items, geometry, group in _all_series(found, series_list):
        _predict_series(run, sid, items, geometry, group)
        if time.monotonic() - last_save >= checkpoint_s:
            _write_tables(out, run.rows, run.series_rows, found.skipped, partial=True)
            last_save = time.monotonic()
    summary = run.summary
    summary.skipped = found.skipped
    summary.warnings.extend(_run_warnings(run))
    _write_tables(out, run.rows, run.series_rows, found.skipped)
    for name in TABLES:
        _partial_name(out / name).unlink(missing_ok=True)
    return summary


def _all_series(
    found: Inputs, series_list: Sequence[series_geometry.SeriesGroup]
) -> Iterator[tuple[str, list[SliceInput], bool, series_geometry.SeriesGroup | None]]:
    """(series id, slices, has DICOM geometry, stack) for DICOM stacks, render folders, then
    single images and arrays; each series is decoded only when its turn comes."""
    for group in series_list:
        yield group.id, slices_of_series(group.id, group.slices, found.skipped), True, group
    for sid, items in render_inputs(found):
        yield sid, items, False, None
    for sid, items in single_inputs(found):
        yield sid, items, True, None


def _predict_series(
    run: _Run, sid: str, items: list[SliceInput], geometry: bool,
    group: series_geometry.SeriesGroup | None,
) -> None:
    """Run the model over one series, write its masks, and add its slice and series rows."""
    if not items:
        return
    preds = _run_model(run.predictor, items, run.batch_size, run.tta)
    # Renders, images and arrays have no DICOM geometry: they always get PNG masks.
    png = "png" in run.formats or items[0].source != "dicom"
    masks = [binary_mask(p["mask"][..., 0], run.predictor.mask_threshold) for p in preds]
    # A model without a mask head returns NaN masks ("not predicted", fusion.export).
    has_masks = [bool(np.isfinite(p["mask"]).all()) for p in preds]
    for index, (it, p, mask, has_mask) in enumerate(zip(items, preds, masks, has_masks)):
        run.rows.append(_slice_row(run, index, it, p, mask, has_mask and png))
        run.summary.predicted += 1
        if run.progress is not None:
            run.progress(1)
    row = _series_row(sid, items, masks, all(has_masks), geometry, group,
                      [r.probabilities[0] for r in run.rows[-len(items):]])
    files, notes = MF.write_series_masks(run.out, run.series_names(sid), run.formats, items, masks,
                                         preds, run.save_probabilities and all(has_masks), run.no_geometry)
    for key, value in files.items():
        setattr(row, key, value)
    row.warnings += notes
    if notes and items[0].source == "dicom":
        run.refused.append(sid)
    run.series_rows.append(row)
    run.summary.series += 1


def _slice_row(
    run: _Run, index: int, it: SliceInput, p: dict[str, Any], mask: np.ndarray, write_png: bool
) -> SliceRow:
    """Write the slice's PNG mask and overlay (when asked) and build its table row."""
    stem = run.names(it.id)
    has_mask = bool(np.isfinite(p["mask"]).all())
    if write_png:
        atomic_write_bytes(inside(run.out / "masks", f"{stem}.png"), _png(mask))
        atomic_write_bytes(inside(run.out / "overlays", f"{stem}.png"), _overlay(it.brain_window(), mask))
    h, w = mask.shape
    px_mm2 = it.pixel_spacing[0] * it.pixel_spacing[1] if it.pixel_spacing else None
    area_fraction = float(p["area_fraction"])
    mask_pixels = int(mask.sum())
    return SliceRow(
        id=it.id, source=it.source, path=it.path, series_id=it.series, index_in_series=index,
        probabilities=tuple(_round(float(v)) for v in p["probabilities"]),
        decisions=tuple(int(v) for v in p["decisions"]),
        area_fraction=_round(area_fraction, 6),
        area_mm2=_round(area_fraction * h * w * px_mm2, 2) if px_mm2 else None,
        mask_pixels=mask_pixels if has_mask else None,
        mask_area_mm2=_round(mask_pixels * px_mm2, 2) if px_mm2 and has_mask else None,
        pixel_spacing_mm=list(it.pixel_spacing) if it.pixel_spacing else None,
        mask_png=f"masks/{stem}.png" if write_png else None,
        overlay_png=f"overlays/{stem}.png" if write_png else None,
    )


def _series_row(
    sid: str, items: Sequence[SliceInput], masks: Sequence[np.ndarray], all_masks: bool,
    geometry: bool, group: series_geometry.SeriesGroup | None, p_any: Sequence[float | None],
) -> SeriesRow:
    """The series' volume (mL from the masks), ABC/2, largest slice and geometry columns."""
    spacings = [it.pixel_spacing for it in items]
    known = all(s is not None for s in spacings) and geometry
    vol = None  # no common grid, or no masks predicted: no volume
    if len({m.shape for m in masks}) == 1 and all_masks:
        thickness = next((it.slice_thickness for it in items if it.slice_thickness), None)
        vol = series_volume(
            np.stack(masks),
            np.asarray(spacings, dtype=np.float64) if known else None,
            positions=[it.position for it in items] if geometry else None,
            slice_thickness=thickness if geometry else None,
            known_spacing=(group.spacing_mm, group.spacing_source) if group else None,
        )
    row = SeriesRow(series_id=sid, source=items[0].source, n_slices=len(items),
                    max_p_any=max((p for p in p_any if p is not None), default=None),
                    **series_geometry.geometry_columns(group))
    if vol is not None:
        largest = vol.largest_slice
        row.n_slices_with_bleed = vol.n_slices_with_bleed
        row.volume_ml, row.abc2_ml = _round(vol.volume_ml, 3), _round(vol.abc2_ml, 3)
        row.a_mm, row.b_mm, row.c_mm = _round(vol.a_mm, 2), _round(vol.b_mm, 2), _round(vol.c_mm, 2)
        row.slice_spacing_mm = _round(vol.slice_spacing_mm, 3)
        row.spacing_source = vol.spacing_source
        row.largest_slice_id = items[largest].id if largest is not None else None
        row.largest_area_mm2 = _round(vol.largest_area_mm2, 2)
    return row


def _run_warnings(run: _Run) -> list[str]:
    """Run-level warnings, one per kind, with counts."""
    out = []
    if run.no_geometry:
        out.append(
            f"{len(run.no_geometry)} series without DICOM geometry (renders, images, arrays): no "
            f"{' or '.join(f for f in run.formats if f in MF.GEOMETRY_FORMATS)} for them, PNG masks "
            f"written instead (see the warnings column of series.csv)")
    if run.refused:
        out.append(
            f"{len(run.refused)} DICOM series did not get every mask file asked for; the reason is "
            f"in the warnings column of series.csv")
    return out


#: The table files of a prediction run, and the marker of a run's partial saves.
TABLES = ("predictions.csv", "predictions.json", "series.csv", "series.json", "skipped.json")
PARTIAL = ".partial"


def _partial_name(path: Path) -> Path:
    """predictions.csv -> predictions.partial.csv"""
    return path.with_name(f"{path.stem}{PARTIAL}{path.suffix}")


def _csv(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if v is None else ";".join(map(str, v)) if isinstance(v, list) else v)
             for k, v in row.items()}
        )
    return buf.getvalue()


def _write_tables(
    out: Path, slice_rows: Sequence[SliceRow], series_rows_: Sequence[SeriesRow],
    skipped: list[SkipRecord], partial: bool = False,
) -> None:
    """Write the five tables atomically (as ``*.partial.*`` when ``partial``)."""

    def name(table: str) -> Path:
        return _partial_name(out / table) if partial else out / table

    rows = [r.to_dict() for r in slice_rows]
    series_rows = [r.to_dict() for r in series_rows_]
    atomic_write_text(name("predictions.csv"), _csv(rows, SLICE_COLUMNS))
    atomic_write_text(name("predictions.json"), json.dumps(rows, indent=1) + "\n")
    atomic_write_text(name("series.csv"), _csv(series_rows, SERIES_COLUMNS))
    atomic_write_text(name("series.json"), json.dumps(series_rows, indent=1) + "\n")
    atomic_write_text(
        name("skipped.json"),
        json.dumps([s.__dict__ for s in skipped], indent=1) + "\n",
    )
