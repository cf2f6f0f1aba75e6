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
  `WINDOW_NAMES` order and scored through ``serving_default``. An ID missing a window is skipped ("missing-window"). All IDs of one
  parent folder (e.g. ``renders/epidural``) form one "series" without geometry (no volume).
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
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from data_build.files import atomic_write_bytes, atomic_write_text
from data_build.schema import LABEL_NAMES
from data_build.windows import (
    PRESETS,
    WINDOW_NAMES,
    canonical_window_name,
    unwindow,
    window,
)
from fusion import mask_formats as MF
from fusion import series as series_geometry
from fusion.errors import FusionError
from fusion.inference import Predictor
from fusion.outputs import walk_inputs, write_marker
from fusion.targets import binary_mask
from fusion.volumes import series_volume

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
#: Files of these kinds met while walking a folder are ignored silently (labels, notes).
IGNORED_EXTENSIONS = frozenset({".csv", ".txt", ".json", ".md", ".html", ".log", ".xml", ".py"})
#: Brain window used to recover HU from a plain image (see the module docstring).
#: A plain grey picture is read as a brain-window render.
PLAIN_IMAGE_WINDOW = PRESETS["brain_window"]
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


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkipRecord:
    """An input left out: the file, a short reason and the detail."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class DicomSlice:
    path: Path
    meta: Any  # data_build.dicom.DicomMeta


@dataclass
class Inputs:
    """What `discover` found."""

    dicom: list[DicomSlice] = field(default_factory=list)
    renders: dict[tuple[str, str], dict[str, Path]] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    arrays: list[Path] = field(default_factory=list)
    skipped: list[SkipRecord] = field(default_factory=list)


def discover(
    paths: Sequence[str | Path], on_file: Callable[[], None] | None = None,
    exclude: Sequence[Path] = (),
) -> Inputs:
    """Sort the given files and folders into DICOM slices, render IDs, images and arrays.

    Unreadable or unknown files become `SkipRecord`s (files of `IGNORED_EXTENSIONS` found in
    folders are ignored silently). DICOM headers are read here (no pixels). ``on_file`` is
    called once per file looked at (for a progress display). Folders in ``exclude`` (the run's
    own output) are not entered; earlier fusion-predict outputs are skipped as "fusion-output".
    """
    from data_build.dicom import DicomReadError, read_meta

    found = Inputs()
    seen: set[Path] = set()

    def output_skipped(folder: Path) -> None:
        found.skipped.append(SkipRecord(str(folder), "fusion-output",
                                        "an earlier fusion-predict --out; not read as input"))

    def unreadable(err: OSError) -> None:
        found.skipped.append(SkipRecord(str(err.filename), "unreadable-folder",
                                        err.strerror or str(err)))

    for given in paths:
        root = Path(given)
        if not root.exists():
            found.skipped.append(SkipRecord(str(root), "missing", "no such file or folder"))
            continue
        for f, explicit in walk_inputs(root, exclude, output_skipped, unreadable):
            if on_file is not None:
                on_file()
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            ext = f.suffix.lower()
            window_name = canonical_window_name(f.parent.name)
            if window_name is not None and ext in IMAGE_EXTENSIONS:
                group = (str(f.parent.parent), f.stem)
                found.renders.setdefault(group, {})[window_name] = f
            elif ext in IMAGE_EXTENSIONS:
                found.images.append(f)
            elif ext == ".npy":
                found.arrays.append(f)
            elif ext in IGNORED_EXTENSIONS and not explicit:
                continue
            else:
                try:
                    found.dicom.append(DicomSlice(f, read_meta(f)))
                except DicomReadError as err:
                    reason = "unreadable-dicom" if ext in (".dcm", ".dicom") else "unknown-file"
                    found.skipped.append(SkipRecord(str(f), reason, err.reason))
    return found


#: Stacks of DICOM slices in geometric order (see `fusion.series.group_series`).
group_series = series_geometry.group_series


def _decode(path: Path) -> np.ndarray:
    """PNG/JPEG pixels [H, W, C] (uint8 or uint16) decoded by TensorFlow, as the reader does
    (`fusion.data`), so a render gives the model the values it was trained on."""
    import tensorflow as tf

    data = path.read_bytes()
    if not data:
        raise ValueError("empty file")
    try:
        img = tf.io.decode_image(data, channels=0, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as err:
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(err, "message", str(err)))
        raise ValueError(f"not a readable PNG/JPEG ({text.splitlines()[0][:120]})") from None
    if img.ndim != 3:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    return img


def _scale(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)


def read_render_grey(path: Path) -> np.ndarray:
    """One window render -> [H, W] float32 in [0, 1], exactly as `fusion.data` reads renders.

    JPEGs go through `fusion.data.decode_render` at their own size (one-channel luma decode,
    the drop's bone colour map inverted for colour JPEGs), so the model sees the values it was
    trained on. Other formats: colour = bone-mapped (`renders.rgb_to_grey`), grey as it is.
    """
    import tensorflow as tf

    from data_build.renders import rgb_to_grey
    from fusion.data import decode_render

    data = path.read_bytes()
    if data[:3] == b"\xff\xd8\xff":
        try:
            height, width, _ = (int(v) for v in tf.image.extract_jpeg_shape(data).numpy())
            if height == width:
                return decode_render(tf.constant(data), height).numpy()[..., 0]
        except tf.errors.InvalidArgumentError as err:
            raise ValueError(f"not a readable JPEG ({str(err).splitlines()[0][:120]})") from None
    img = _decode(path)
    if img.shape[-1] >= 3:
        return np.asarray(rgb_to_grey(img[..., :3]), dtype=np.float32)
    return _scale(img[..., 0])


def read_plain_grey(path: Path) -> np.ndarray:
    """A plain image -> [H, W] float32 grey in [0, 1].

    Grey images (one channel, or RGB with R = G = B within 2 levels) are taken as they are;
    other colour images are assumed to be bone-mapped like the drop's renders and inverted
    with `data_build.renders.rgb_to_grey`. An alpha channel is ignored.
    """
    from data_build.renders import rgb_to_grey

    img = _decode(path)
    if img.shape[-1] < 3:
        return _scale(img[..., 0])
    rgb = img[..., :3]
    spread = np.abs(rgb.astype(np.int32) - rgb[..., :1].astype(np.int32)).max()
    if spread <= (2 * 257 if rgb.dtype == np.uint16 else 2):
        return _scale(rgb[..., 0])
    if rgb.dtype == np.uint16:
        rgb = (rgb // 257).astype(np.uint8)
    return np.asarray(rgb_to_grey(rgb), dtype=np.float32)


def _load_npy(path: Path) -> tuple[np.ndarray, str]:
    """(array, "images" | "hu") from a .npy file; ValueError with the reason otherwise."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0, "images"
        arr = arr.astype(np.float32)
        if not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise ValueError("[H, W, 4] arrays must hold windows in [0, 1] (or uint8)")
        return arr, "images"
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1):
        arr = arr.reshape(arr.shape[0], arr.shape[1]).astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("HU array holds NaN or infinite values")
        return arr, "hu"
    raise ValueError(f"expected [H, W, 4] windows or [H, W] HU, got shape {arr.shape}")


# --- per-slice work ----------------------------------------------------------------------------


@dataclass
class SliceInput:
    """One slice ready for the model."""

    id: str
    source: str  # dicom | render | image | npy
    path: str
    series: str
    kind: str  # "hu" (serve_hu) or "images" (serving_default)
    array: np.ndarray  # [H, W] HU or [H, W, 4] windows
    pixel_spacing: tuple[float, float] | None = None
    position: tuple[float, float, float] | None = None
    slice_thickness: float | None = None
    orientation: tuple[float, ...] | None = None

    def brain_window(self) -> np.ndarray:
        """[H, W] in [0, 1] for the overlay picture."""
        if self.kind == "hu":
            brain = PRESETS["brain_window"]
            return window(self.array, brain.level, brain.width)
        return self.array[..., WINDOW_NAMES.index("brain_window")]


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


def _slices_of_series(
    sid: str, slices: Sequence[DicomSlice], skipped: list[SkipRecord]
) -> list[SliceInput]:
    from data_build.dicom import DicomReadError, read_hu

    out = []
    for s in slices:
        try:
            hu, meta = read_hu(s.path)
        except DicomReadError as err:
            skipped.append(SkipRecord(str(s.path), "unreadable-dicom", err.reason))
            continue
        out.append(
            SliceInput(meta.id, "dicom", str(s.path), sid, "hu", hu, meta.pixel_spacing,
                       meta.position, meta.slice_thickness, meta.orientation)
        )
    return out


def _render_inputs(found: Inputs) -> Iterable[tuple[str, list[SliceInput]]]:
    by_folder: dict[str, list[SliceInput]] = {}
    for (folder, sid), windows in sorted(found.renders.items()):
        missing = [w for w in WINDOW_NAMES if w not in windows]
        if missing:
            found.skipped.append(
                SkipRecord(str(next(iter(windows.values()))), "missing-window",
                           f"{sid} lacks {', '.join(missing)}")
            )
            continue
        chans = []
        for w in WINDOW_NAMES:
            try:
                chans.append(read_render_grey(windows[w]))
            except (ValueError, OSError) as err:
                found.skipped.append(SkipRecord(str(windows[w]), "corrupt-image", str(err)))
                break
        if len(chans) != len(WINDOW_NAMES):
            continue
        if len({c.shape for c in chans}) != 1:
            found.skipped.append(
                SkipRecord(str(windows[WINDOW_NAMES[0]].parent.parent), "size-mismatch",
                           f"{sid}: windows differ in size {[c.shape for c in chans]}")
            )
            continue
        series = f"render:{Path(folder).name}"
        by_folder.setdefault(series, []).append(
            SliceInput(sid, "render", str(windows[WINDOW_NAMES[0]].parent.parent), series,
                       "images", np.stack(chans, axis=-1))
        )
    yield from by_folder.items()


def _single_inputs(found: Inputs) -> Iterable[tuple[str, list[SliceInput]]]:
    plain = PLAIN_IMAGE_WINDOW
    for path in found.images:
        try:
            gray = read_plain_grey(path)
        except (ValueError, OSError) as err:
            found.skipped.append(SkipRecord(str(path), "corrupt-image", str(err)))
            continue
        hu = unwindow(gray, plain.level, plain.width)
        yield f"image:{path.stem}", [
            SliceInput(path.stem, "image", str(path), f"image:{path.stem}", "hu", hu)
        ]
    for path in found.arrays:
        try:
            arr, kind = _load_npy(path)
        except (ValueError, OSError) as err:
            found.skipped.append(SkipRecord(str(path), "bad-array", str(err)))
            continue
        yield f"npy:{path.stem}", [
            SliceInput(path.stem, "npy", str(path), f"npy:{path.stem}", kind, arr)
        ]


def run_predictions(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    out: Path,
    *,
    tta: str = "none",
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
    write_marker(out, {"mask_formats": list(formats)})
    found = discover(inputs, on_file, exclude=[out])
    series_list = group_series(
        found.dicom, lambda path, reason, detail: found.skipped.append(SkipRecord(path, reason, detail))
    )
    if on_total is not None:
        on_total(len(found.dicom) + len(found.renders) + len(found.images) + len(found.arrays))
    names = _Names()
    series_names = _Names()
    rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    summary = PredictSummary(out=out)

    def process(sid: str, items: list[SliceInput], geometry: bool,
                group: series_geometry.SeriesGroup | None = None) -> None:
        if not items:
            return
        preds = _run_model(predictor, items, batch_size, tta)
        # Renders, images and arrays have no DICOM geometry: they always get PNG masks.
        png = "png" in formats or items[0].source != "dicom"
        masks = []
        all_masks = True
        for index, (it, p) in enumerate(zip(items, preds)):
            # A model without a mask head returns NaN masks ("not predicted", fusion.export).
            has_mask = bool(np.isfinite(p["mask"]).all())
            all_masks &= has_mask
            mask = binary_mask(p["mask"][..., 0])
            masks.append(mask)
            stem = names(it.id)
            if has_mask and png:
                atomic_write_bytes(inside(out / "masks", f"{stem}.png"), _png(mask))
                atomic_write_bytes(inside(out / "overlays", f"{stem}.png"),
                                   _overlay(it.brain_window(), mask))
            h, w = mask.shape
            px_mm2 = it.pixel_spacing[0] * it.pixel_spacing[1] if it.pixel_spacing else None
            area_fraction = float(p["area_fraction"])
            mask_pixels = int(mask.sum())
            row: dict[str, Any] = {
                "id": it.id,
                "source": it.source,
                "path": it.path,
                "series_id": it.series,
                "index_in_series": index,
                **{f"p_{n}": _round(float(p["probabilities"][j])) for j, n in
                   enumerate(LABEL_NAMES)},
                **{f"decision_{n}": int(p["decisions"][j]) for j, n in enumerate(LABEL_NAMES)},
                "area_fraction": _round(area_fraction, 6),
                "area_mm2": _round(area_fraction * h * w * px_mm2, 2) if px_mm2 else None,
                "mask_pixels": mask_pixels if has_mask else None,
                "mask_area_mm2": _round(mask_pixels * px_mm2, 2) if px_mm2 and has_mask else None,
                "pixel_spacing_mm": list(it.pixel_spacing) if it.pixel_spacing else None,
                "mask_png": f"masks/{stem}.png" if has_mask and png else None,
                "overlay_png": f"overlays/{stem}.png" if has_mask and png else None,
            }
            rows.append(row)
            summary.predicted += 1
            if progress is not None:
                progress(1)
        spacings = [it.pixel_spacing for it in items]
        known = all(s is not None for s in spacings) and geometry
        shapes = {m.shape for m in masks}
        if len(shapes) != 1 or not all_masks:
            vol = None  # no common grid, or no masks predicted: no volume
        else:
            thickness = next((it.slice_thickness for it in items if it.slice_thickness), None)
            vol = series_volume(
                np.stack(masks),
                np.asarray(spacings, dtype=np.float64) if known else None,
                positions=[it.position for it in items] if geometry else None,
                slice_thickness=thickness if geometry else None,
                known_spacing=(group.spacing_mm, group.spacing_source) if group else None,
            )
        largest = vol.largest_slice if vol is not None else None
        p_any = [r["p_any"] for r in rows[-len(items):]]
        series_rows.append(
            {
                "series_id": sid,
                "source": items[0].source,
                "n_slices": len(items),
                "n_slices_with_bleed": vol.n_slices_with_bleed if vol else None,
                "volume_ml": _round(vol.volume_ml, 3) if vol else None,
                "abc2_ml": _round(vol.abc2_ml, 3) if vol else None,
                "a_mm": _round(vol.a_mm, 2) if vol else None,
                "b_mm": _round(vol.b_mm, 2) if vol else None,
                "c_mm": _round(vol.c_mm, 2) if vol else None,
                "slice_spacing_mm": _round(vol.slice_spacing_mm, 3) if vol else None,
                "spacing_source": vol.spacing_source if vol else "unknown",
                "largest_slice_id": items[largest].id if largest is not None else None,
                "largest_area_mm2": _round(vol.largest_area_mm2, 2) if vol else None,
                "max_p_any": max(p_any) if p_any else None,
                **series_geometry.geometry_columns(group),
            }
        )
        files, notes = MF.write_series_masks(out, series_names(sid), formats, items, masks,
                                             preds, save_probabilities and all_masks, no_geometry)
        series_rows[-1].update(files)
        series_rows[-1]["warnings"] += notes
        if notes and items[0].source == "dicom":
            refused.append(sid)
        summary.series += 1

    last_save = time.monotonic()

    def checkpoint() -> None:
        nonlocal last_save
        if time.monotonic() - last_save >= checkpoint_s:
            _write_tables(out, rows, series_rows, found.skipped, partial=True)
            last_save = time.monotonic()

    no_geometry: list[str] = []
    refused: list[str] = []  # DICOM series that did not get every mask file asked for
    for group in series_list:
        process(group.id, _slices_of_series(group.id, group.slices, found.skipped),
                geometry=True, group=group)
        checkpoint()
    for sid, items in _render_inputs(found):
        process(sid, items, geometry=False)
        checkpoint()
    for sid, items in _single_inputs(found):
        process(sid, items, geometry=True)
        checkpoint()

    summary.skipped = found.skipped
    if no_geometry:
        summary.warnings.append(
            f"{len(no_geometry)} series without DICOM geometry (renders, images, arrays): no "
            f"{' or '.join(f for f in formats if f in MF.GEOMETRY_FORMATS)} for them, PNG masks "
            f"written instead (see the warnings column of series.csv)")
    if refused:
        summary.warnings.append(
            f"{len(refused)} DICOM series did not get every mask file asked for; the reason is "
            f"in the warnings column of series.csv")
    _write_tables(out, rows, series_rows, found.skipped)
    for name in TABLES:
        _partial_name(out / name).unlink(missing_ok=True)
    return summary


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
    out: Path, rows: list[dict[str, Any]], series_rows: list[dict[str, Any]],
    skipped: list[SkipRecord], partial: bool = False,
) -> None:
    """Write the five tables atomically (as ``*.partial.*`` when ``partial``)."""

    def name(table: str) -> Path:
        return _partial_name(out / table) if partial else out / table

    slice_cols = (
        ["id", "source", "path", "series_id", "index_in_series"]
        + [f"p_{n}" for n in LABEL_NAMES] + [f"decision_{n}" for n in LABEL_NAMES]
        + ["area_fraction", "area_mm2", "mask_pixels", "mask_area_mm2", "pixel_spacing_mm",
           "mask_png", "overlay_png"]
    )
    series_cols = [
        "series_id", "source", "n_slices", "n_slices_with_bleed", "volume_ml", "abc2_ml", "a_mm",
        "b_mm", "c_mm", "slice_spacing_mm", "spacing_source", "largest_slice_id",
        "largest_area_mm2", "max_p_any", "n_duplicates_dropped", "n_gaps", "largest_gap_mm",
        "mask_nifti", "probabilities_nifti", "mask_seg", "warnings",
    ]
    atomic_write_text(name("predictions.csv"), _csv(rows, slice_cols))
    atomic_write_text(name("predictions.json"), json.dumps(rows, indent=1) + "\n")
    atomic_write_text(name("series.csv"), _csv(series_rows, series_cols))
    atomic_write_text(name("series.json"), json.dumps(series_rows, indent=1) + "\n")
    atomic_write_text(
        name("skipped.json"),
        json.dumps([s.__dict__ for s in skipped], indent=1) + "\n",
    )
