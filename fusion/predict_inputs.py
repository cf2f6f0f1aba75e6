"""fusion-predict's inputs: find them, read them, and turn them into model-ready slices.

`discover` sorts the given files and folders into DICOM slices (headers only), render IDs,
plain images and arrays, counting what it must skip (`SkipRecord`). `slices_of_series`,
`render_inputs` and `single_inputs` then decode each group into `SliceInput`s: HU for DICOM
slices and plain images (``serve_hu``), the four grey windows for renders (``serving_default``).
`fusion.predict` runs the model over them and writes the outputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from data_build.windows import PRESETS, WINDOW_NAMES, canonical_window_name, unwindow, window
from fusion import series as series_geometry
from fusion.outputs import walk_inputs

log = logging.getLogger(__name__)

#: Plain pictures (read as one brain-window render) and the render windows' files.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
#: Files of these kinds met while walking a folder are ignored silently (labels, notes).
IGNORED_EXTENSIONS = frozenset({".csv", ".txt", ".json", ".md", ".html", ".log", ".xml", ".py"})
#: A plain grey picture is read as a brain-window render.
PLAIN_IMAGE_WINDOW = PRESETS["brain_window"]

# --- discovery ----------------------------------------------------------------------------------


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


def _decode_cv2(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> [H, W, C] uint8/uint16 in RGB(A) channel order, as `_decode` gives them
    (OpenCV, no TensorFlow)."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError("not a readable PNG/JPEG (OpenCV cannot decode it)")
    if img.ndim == 2:
        return img[..., None]
    code = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}.get(img.shape[-1])
    return cv2.cvtColor(img, code) if code is not None else img


def _decode(path: Path) -> np.ndarray:
    """PNG/JPEG pixels [H, W, C] (uint8 or uint16) decoded as the training reader does (OpenCV,
    `fusion.reader`, on every backend), so a render gives the model the values it was trained on."""
    data = path.read_bytes()
    if not data:
        raise ValueError("empty file")
    return _decode_cv2(data)


def _scale(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)


def read_render_grey(path: Path) -> np.ndarray:
    """One window render -> [H, W] float32 in [0, 1], exactly as the training reader reads renders.

    Square JPEGs go through `fusion.reader.decode_window` at their own size (one-channel luma
    decode, the drop's bone colour map inverted for colour JPEGs), so the model sees the values
    it was trained on, on every backend. Other formats: colour = bone-mapped
    (`renders.rgb_to_grey`), grey as it is.
    """
    from data_build.renders import rgb_to_grey
    from fusion.reader import ReaderError, codes_to_grey, decode_window

    data = path.read_bytes()
    img = _decode_cv2(data) if data else None
    if img is None:
        raise ValueError("empty file")
    if data[:3] == b"\xff\xd8\xff" and img.shape[0] == img.shape[1]:
        try:  # decoded twice (size, then luma): one render per call, not the training loop
            codes, table = decode_window(data, img.shape[0], 1)
        except ReaderError as err:
            raise ValueError(f"not a readable JPEG ({err})") from None
        return codes_to_grey(codes[None, ..., None], np.array([[table]]))[0, ..., 0]
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


# --- decoding into model-ready slices ---------------------------------------------------------


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


def slices_of_series(
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


def render_inputs(found: Inputs) -> Iterable[tuple[str, list[SliceInput]]]:
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


def single_inputs(found: Inputs) -> Iterable[tuple[str, list[SliceInput]]]:
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


