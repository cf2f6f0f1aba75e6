"""Write a synthetic drop in exactly the real layout (`fusion-synth OUT`).

The drop mirrors /work/shared/docs/dataset-format.md, quirks included, so every command of the
project runs on a fresh machine without the private data:

```
OUT/hemorrhage-labels.csv             every rendered slice + label-only rows (sorted by Image)
OUT/flagged.txt                       a few ``ID_xxx.jpg`` lines, CRLF
OUT/renders/<type>/<window>/<ID>.jpg  4 windows, RGB JPEG with the drop's bluish "bone" tint
OUT/dcms/<ID>.dcm                     CT Image Storage, int16 or 12-bit, RSNA tag set
OUT/segmentation/Results_*.csv        5 Detection files + duplicate Subdural + Tracing (IVH)
```

Slices come from `data_build.synth.phantom` (one patient = consecutive slices with smoothly varying
bleeds). A slice's folder is what it shows: "normal" without blood, the type with one type,
"multi" with several (so a bleeding patient's end slices can land in "normal").

Where masks go: single-type slices in their type's Detection CSV, intraventricular ones in the
Tracing CSV, multi slices (all their regions) in the Multiple Detection CSV. Normal slices have
no rows (their mask is known empty from the folder).

Everything is derived from ``seed``: the same arguments give the same bytes. The drop is
written into a sibling ``.<name>.synth-partial`` folder and renamed to ``root`` at the end, so
a killed run leaves no half-written drop under ``root``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from tqdm import tqdm

from data_build.errors import DataBuildError
from data_build.renders import BONE_LUT
from data_build.schema import FOLDER_TYPES, LABEL_NAMES, TYPE_NAMES
from data_build.synth import phantom, realistic
from data_build.synth.difficulty import DIFFICULTIES
from data_build.windows import PRESETS, canonical_window_name, to_uint8, window

#: Render folder names per window set. "real" is the drop's; "brief" names bone_window in place
#: of brain_window (same channel, see `windows.ALIASES`).
WINDOW_SETS: Mapping[str, tuple[str, ...]] = {
    "real": ("brain_bone_window", "brain_window", "max_contrast_window", "subdural_window"),
    "brief": ("bone_window", "brain_bone_window", "max_contrast_window", "subdural_window"),
}

LABELS_FILE = "hemorrhage-labels.csv"
FLAGGED_FILE = "flagged.txt"
SEGMENTATION_DIR = "segmentation"

DETECTION_HEADER: tuple[str, ...] = (
    "Case ID", "Origin", "URL", "Labeling State", "All Labels", "Total Reads",
    "Total Qualified Reads", "Majority Label", "Number of ROIs", "Correct Label", "Difficulty",
    "Agreement", "Comments", "Internal Notes",
)
TRACING_HEADER: tuple[str, ...] = (
    "Case ID", "Origin", "URL", "Labeling State", "All Annotations", "Number of Annotations",
    "ROI", "Number of ROIs", "Difficulty",
)
#: Detection file of each folder type that has one (exact names of the real drop).
DETECTION_FILES: Mapping[str, str] = {
    "epidural": "Results_Epidural Hemorrhage Detection_2020-11-16_21.31.26.148.csv",
    "intraparenchymal": "Results_Intraparenchymal Hemorrhage Detection_2020-11-16_21.39.31.268.csv",
    "multi": "Results_Multiple Hemorrhage Detection_2020-11-16_21.36.24.018.csv",
    "subarachnoid": "Results_Subarachnoid Hemorrhage Detection_2020-11-16_21.36.18.668.csv",
    "subdural": "Results_Subdural Hemorrhage Detection_2020-11-16_21.35.48.040.csv",
}
#: Byte-identical copy of the Subdural file, as in the real drop.
SUBDURAL_DUPLICATE_FILE = "Results_Subdural Hemorrhage Detection_2020-11-16_21.37.19.745.csv"
TRACING_FILE = "Results_Brain Hemorrhage Tracing_2020-09-28_15.21.52.597.csv"

#: Quantisation grid of the Majority / Correct coordinates in the real drop (pixel = c x 512).
COORD_GRID = 512
#: Correct Label forms, cycled over the Detection slices so each appears in a drop of 8+ slices.
#: "full" = all polygons (Python repr); the others are the empty forms seen in the real files.
CORRECT_FORMS: tuple[str, ...] = ("full", "nan", "full", "[]", "full", "[[]]", "full", "[[], []]")
LABELING_STATES: tuple[str, ...] = ("Labeled", "Ready", "In Progress", "Gold Standard", "Flagged")
MULTILINE_COMMENT = "Margins unclear,\nsee the adjacent slice"
URL_PREFIX = "https://synthetic.invalid/hemorrhage/"
#: Fixed so the DICOM bytes do not change with the installed pydicom version.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"
JPEG_QUALITY = 95

#: Grey level 0..255 -> RGB [256, 3] uint8: the drop's bone colour map (see data_build.renders).
TINT_LUT: np.ndarray = BONE_LUT


class SynthError(DataBuildError, ValueError):
    """Bad arguments for `write_synthetic_drop`, or an output folder that is not empty."""


@dataclass(frozen=True)
class BrokenInput:
    """One input deliberately broken in the drop.

    Attributes:
      id: the slice id concerned.
      kind: "corrupt-jpeg", "missing-window", "malformed-polygon" or "corrupt-dicom".
      path: the file broken (or, for a missing window, the path that is absent).
      detail: what was done to it.
    """

    id: str
    kind: str
    path: str
    detail: str


@dataclass(frozen=True)
class SynthSlice:
    """Ground truth of one rendered slice.

    Attributes:
      id: slice id, ``ID_`` + 9 hex digits.
      patient_id: DICOM PatientID of its patient.
      patient_index: 0-based patient number; slices of a patient are consecutive.
      folder_type: render folder (`schema.FOLDER_TYPES`).
      labels: 0/1 per `schema.LABEL_NAMES` (as in hemorrhage-labels.csv).
      mask_pixels: bleed pixels of the phantom mask at full resolution.
      n_regions: polygons written for it (0 = no segmentation rows).
      polygon_file: segmentation file name holding its polygons, "" when none.
      correct_form: Correct Label form written ("full", "nan", "[]", ...), "" for Tracing/none.
    """

    id: str
    patient_id: str
    patient_index: int
    folder_type: str
    labels: tuple[int, ...]
    mask_pixels: int
    n_regions: int = 0
    polygon_file: str = ""
    correct_form: str = ""


@dataclass(frozen=True)
class SynthSummary:
    """What `write_synthetic_drop` wrote.

    Attributes:
      root: the drop folder.
      counts: rendered slices per folder type (every `schema.FOLDER_TYPES` key present).
      n_slices: rendered slices.
      n_with_polygons: rendered slices with segmentation polygons.
      n_renders: JPEG files on disk (4 per slice, less the planted missing window).
      n_dicoms: DICOM files written (corrupt one included).
      n_label_rows: rows of hemorrhage-labels.csv (rendered + label-only).
      windows: render folder names used.
      flagged: ids listed in flagged.txt.
      broken: inputs deliberately broken.
      slices: per rendered slice ground truth, in writing order.
      paths: "labels", "flagged", "renders", "segmentation", "dcms" -> path.
      difficulty: phantom setting the slices were drawn with (`difficulty.DIFFICULTIES`).
    """

    root: Path
    counts: Mapping[str, int]
    n_slices: int
    n_with_polygons: int
    n_renders: int
    n_dicoms: int
    n_label_rows: int
    windows: tuple[str, ...]
    flagged: tuple[str, ...]
    broken: tuple[BrokenInput, ...]
    slices: tuple[SynthSlice, ...]
    paths: Mapping[str, Path]
    difficulty: str = "easy"


@dataclass(frozen=True)
class SynthCase:
    """One synthetic slice with its identity, as yielded by `iter_synthetic_slices`.

    Attributes:
      id: slice id.
      patient_index: 0-based patient number.
      patient_id, study_uid, series_uid: DICOM identity of its series.
      slice_index: position in the patient's series (0 = lowest).
      slice: the phantom (HU, mask, types).
      spacing_mm: pixel spacing (row = column), mm.
      z_mm: ImagePositionPatient z, mm.
      thickness_mm: slice thickness and spacing along z, mm.
      dicom_variant: "explicit16", "explicit12" or "implicit12" (RSNA encodings).
      intercept: RescaleIntercept (-1024, or -1000 for a few 12-bit series).
    """

    id: str
    patient_index: int
    patient_id: str
    study_uid: str
    series_uid: str
    slice_index: int
    slice: phantom.PhantomSlice
    spacing_mm: float
    z_mm: float
    thickness_mm: float
    dicom_variant: str
    intercept: float


# --- identity and phantoms -------------------------------------------------------------------


class _IdSource:
    """Unique seeded ``ID_`` + n hex digit ids (the real drop's 9-digit slice ids)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self.used: set[str] = set()

    def new(self, digits: int = 9) -> str:
        while True:
            value = int(self._rng.integers(0, 16**digits))
            text = f"ID_{value:0{digits}x}"
            if text not in self.used:
                self.used.add(text)
                return text


def _patient_folder_types(n_patients: int, rng: np.random.Generator) -> list[str]:
    """Folder type of each patient: all seven types in a seeded order plus "multi", cycling.

    "multi" comes twice in every cycle of eight: in RSNA's labels a bleeding slice carries
    about 1.4 types on average (the per-type positives sum to ~1.4x the "any" positives), so
    slices with several types are a large share of the bleeds, not one type in seven. With one
    multi patient per seven, synthetic bleeding slices carried 1.25 types on average. The first
    seven patients still show all seven folder types.
    """
    order = [FOLDER_TYPES[i] for i in rng.permutation(len(FOLDER_TYPES))] + ["multi"]
    return [order[i % len(order)] for i in range(n_patients)]


def iter_synthetic_slices(
    n_patients: int, slices_per_patient: int, size: int, seed: int, difficulty: str = "easy"
) -> Iterator[SynthCase]:
    """Yield every slice of the synthetic drop in writing order (deterministic for a seed).

    `write_synthetic_drop` writes exactly these slices; tests call this to get the phantom
    masks behind a drop without storing them in it. ``difficulty`` is one of
    `difficulty.DIFFICULTIES`; "real" also draws the field of view (and so the pixel spacing).
    """
    _check_difficulty(difficulty)
    streams = np.random.SeedSequence(seed).spawn(n_patients + 2)
    ids = _IdSource(np.random.default_rng(streams[0]))
    folder_types = _patient_folder_types(n_patients, np.random.default_rng(streams[1]))
    # Mostly 16-bit signed explicit VR; some 12-bit unsigned, explicit or implicit VR.
    variants = ("explicit16", "explicit12", "explicit16", "implicit12", "explicit16")
    for p in range(n_patients):
        rng = np.random.default_rng(streams[p + 2])
        patient_id = ids.new(8)
        entropy = ["fusion-synth", str(seed), patient_id]
        study_uid = generate_uid(entropy_srcs=[*entropy, "study"])
        series_uid = generate_uid(entropy_srcs=[*entropy, "series"])
        variant = variants[p % len(variants)]
        # A few 12-bit series carry intercept -1000, as one real RSNA file does.
        intercept = -1000.0 if variant == "explicit12" and (p // len(variants)) % 2 == 0 \
            else -1024.0
        fov_mm = float(rng.uniform(205.0, 256.0))  # 0.40..0.50 mm pixels at 512
        z_offset = float(rng.uniform(-60.0, 40.0))
        if difficulty == "easy":
            slices = phantom.make_patient(folder_types[p], slices_per_patient, size, rng)
        else:
            slices, fov_mm = realistic.make_patient(folder_types[p], slices_per_patient, size, rng)
        thickness = float(round(100.0 * (slices[1].z - slices[0].z), 3)) if len(slices) > 1 else 5.0
        for index, sl in enumerate(slices):
            yield SynthCase(
                id=ids.new(9), patient_index=p, patient_id=patient_id, study_uid=study_uid,
                series_uid=series_uid, slice_index=index, slice=sl, spacing_mm=fov_mm / size,
                z_mm=round(z_offset + 100.0 * sl.z, 4), thickness_mm=thickness,
                dicom_variant=variant, intercept=intercept,
            )


# --- renders ---------------------------------------------------------------------------------


def render_window(hu: np.ndarray, window_name: str) -> bytes:
    """One window of a slice as the drop's render: tinted RGB JPEG bytes.

    Args:
      hu: [H, W] float32 HU.
      window_name: render folder name (canonical or alias, e.g. "bone_window").

    Returns:
      JPEG bytes of an [H, W, 3] RGB image, quality `JPEG_QUALITY`.
    """
    canonical = canonical_window_name(window_name)
    if canonical is None:
        raise SynthError(f"unknown window {window_name!r}")
    preset = PRESETS[canonical]
    grey = to_uint8(window(hu, preset.level, preset.width))
    rgb = TINT_LUT[grey]
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise SynthError(f"JPEG encoding failed for a {hu.shape} image")
    return encoded.tobytes()


# --- DICOM -----------------------------------------------------------------------------------


def _stored_values(case: SynthCase) -> tuple[np.ndarray, int, int]:
    """HU -> stored pixels; returns (pixels, bits stored, pixel representation)."""
    hu = np.rint(case.slice.hu).astype(np.int32)
    stored = hu - int(case.intercept)
    if case.dicom_variant == "explicit16":
        size = hu.shape[0]
        ys, xs = np.mgrid[0:size, 0:size]
        radius = 0.5 * size
        outside = (xs + 0.5 - radius) ** 2 + (ys + 0.5 - radius) ** 2 > radius * radius
        # Scanner padding outside the reconstruction circle, as in the real 16-bit RSNA files.
        stored = np.where(outside & (hu < -900), -2000, stored)
        return np.clip(stored, -32768, 32767).astype(np.int16), 16, 1
    return np.clip(stored, 0, 4095).astype(np.uint16), 12, 0


def expected_dicom_hu(case: SynthCase) -> np.ndarray:
    """HU a correct reader gets back from the DICOM of ``case``: [H, W] float32."""
    pixels, _, _ = _stored_values(case)
    return pixels.astype(np.float32) + np.float32(case.intercept)


def dicom_bytes(case: SynthCase) -> bytes:
    """The slice as a DICOM file (CT Image Storage) with the RSNA files' tag set."""
    pixels, bits, representation = _stored_values(case)
    size = pixels.shape[0]
    implicit = case.dicom_variant == "implicit12"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "FUSION_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    with warnings.catch_warnings():
        # The drop's SOP Instance UID is the slice id ("ID_..."), not a valid UI value.
        warnings.simplefilter("ignore", UserWarning)
        meta.MediaStorageSOPInstanceUID = case.id
        ds.SOPInstanceUID = case.id
    ds.Modality = "CT"
    ds.PatientID = case.patient_id
    ds.StudyInstanceUID = case.study_uid
    ds.SeriesInstanceUID = case.series_uid
    ds.StudyID = ""
    ds.InstanceNumber = case.slice_index + 1
    half = case.spacing_mm * size / 2.0
    ds.ImagePositionPatient = [f"{-half:.6f}", f"{-half:.6f}", f"{case.z_mm:.6f}"]
    ds.ImageOrientationPatient = ["1.000000", "0.000000", "0.000000",
                                  "0.000000", "1.000000", "0.000000"]
    ds.SliceThickness = f"{case.thickness_mm:.3f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.PixelSpacing = [f"{case.spacing_mm:.6f}", f"{case.spacing_mm:.6f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = representation
    if case.dicom_variant == "explicit16":
        ds.WindowCenter, ds.WindowWidth = "30", "80"
    elif case.dicom_variant == "explicit12":
        ds.WindowCenter, ds.WindowWidth = ["00040", "00040"], ["00080", "00080"]
    else:
        ds.WindowCenter, ds.WindowWidth = ["00036", "00036"], ["00080", "00080"]
    ds.RescaleIntercept = f"{case.intercept:.0f}"
    ds.RescaleSlope = "1"
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --- polygons and segmentation rows ----------------------------------------------------------

PolygonPoints = list[tuple[float, float]]


def mask_polygons(mask: np.ndarray, epsilon_px: float | None = None) -> list[PolygonPoints]:
    """Outer contours of a 0/1 mask as normalised, k/512-quantised polygons (one per region).

    Args:
      mask: [size, size] uint8 0/1.
      epsilon_px: Douglas-Peucker tolerance in pixels (annotators click fewer points);
        default 0.5 px at 512, scaled with the size so small test images stay exact enough.

    Returns:
      Polygons of (x, y) = (column / size, row / size), each rounded to multiples of 1/512.
    """
    size = mask.shape[1]
    if epsilon_px is None:
        epsilon_px = 0.5 * size / 512.0
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, epsilon_px, True).reshape(-1, 2)
        if len(points) < 3:
            points = contour.reshape(-1, 2)
        pts = [(round(float(c) / size * COORD_GRID) / COORD_GRID,
                round(float(r) / size * COORD_GRID) / COORD_GRID) for c, r in points]
        while len(pts) < 3:  # a one- or two-point contour: repeat so it stays a polygon
            pts.append(pts[-1])
        polygons.append(pts)
    return polygons


def _json_polygon(points: Sequence[tuple[float, float]]) -> str:
    """Majority Label form: JSON, double quotes."""
    return json.dumps([{"x": x, "y": y} for x, y in points])


def _repr_polygons(polygons: Sequence[Sequence[tuple[float, float]]]) -> str:
    """Correct Label form: Python repr, single quotes, all polygons of the slice."""
    return repr([[{"x": x, "y": y} for x, y in p] for p in polygons])


def _reader_polygon(points: Sequence[tuple[float, float]], size: int,
                    rng: np.random.Generator) -> list[dict[str, float]]:
    """One reader's unquantised, jittered version of a polygon (All Labels)."""
    jitter = rng.normal(0.0, 0.6 / size, size=(len(points), 2))
    return [{"x": float(np.clip(x + dx, 0.0, 1.0)), "y": float(np.clip(y + dy, 0.0, 1.0))}
            for (x, y), (dx, dy) in zip(points, jitter)]


def _fmt(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _detection_rows(slice_id: str, case_id: int, polygons: list[PolygonPoints],
                    correct_form: str, size: int, rng: np.random.Generator) -> list[list[str]]:
    """One row per region; Correct Label (all polygons or an empty form) repeated on each."""
    state = LABELING_STATES[int(rng.choice(4, p=[0.55, 0.15, 0.1, 0.2]))]
    correct = {"full": _repr_polygons(polygons), "nan": ""}.get(correct_form, correct_form)
    agreement = float(rng.uniform(0.55, 0.97))
    difficulty = float(rng.uniform(0.02, 0.35))
    rows = []
    for polygon in polygons:
        readers = int(rng.integers(2, 7))
        labels = [json.dumps(_reader_polygon(polygon, size, rng)) for _ in range(readers)]
        if rng.random() < 0.3:
            labels.append("[]")  # a reader who drew nothing
        rows.append([
            str(case_id), f"{slice_id}.jpg", f"{URL_PREFIX}{slice_id}.jpg", state, repr(labels),
            str(len(labels) + int(rng.integers(0, 3))), str(len(labels)), _json_polygon(polygon),
            str(len(polygons)), correct, _fmt(difficulty), _fmt(agreement), "", "",
        ])
    return rows


def _tracing_row(slice_id: str, case_id: int, polygons: list[PolygonPoints], size: int,
                 rng: np.random.Generator) -> list[str]:
    """One row per slice; ROI is one polygon (one region) or a list of polygons, JSON."""
    readers = int(rng.integers(2, 6))
    annotations = [json.dumps([_reader_polygon(p, size, rng) for p in polygons])
                   for _ in range(readers)]
    if len(polygons) == 1:
        roi = _json_polygon(polygons[0])
    else:
        roi = json.dumps([[{"x": x, "y": y} for x, y in p] for p in polygons])
    state = LABELING_STATES[int(rng.choice(4, p=[0.55, 0.15, 0.1, 0.2]))]
    return [str(case_id), f"{slice_id}.jpg", f"{URL_PREFIX}{slice_id}.jpg", state,
            repr(annotations), str(readers), roi, str(len(polygons)),
            _fmt(float(rng.uniform(0.02, 0.35)))]


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


# --- writing ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    """Write a whole file (the drop lives in a partial folder until it is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _check_difficulty(difficulty: str) -> None:
    if difficulty not in DIFFICULTIES:
        raise SynthError(
            f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}"
        )


def _check_arguments(n_patients: int, slices_per_patient: int, size: int, mask_fraction: float,
                     window_set: str) -> None:
    if n_patients < 1:
        raise SynthError(f"n_patients must be >= 1, got {n_patients}")
    if slices_per_patient < 1:
        raise SynthError(f"slices_per_patient must be >= 1, got {slices_per_patient}")
    if size < 32:
        raise SynthError(f"size must be >= 32 pixels, got {size}")
    if not 0.0 <= mask_fraction <= 1.0:
        raise SynthError(f"mask_fraction must be in [0, 1], got {mask_fraction}")
    if window_set not in WINDOW_SETS:
        raise SynthError(
            f"window_set must be one of {', '.join(WINDOW_SETS)}, got {window_set!r}"
        )


def _prepare_partial(root: Path) -> Path:
    """Check ``root`` is new or empty; return a fresh sibling partial folder to write into."""
    if root.exists() and not root.is_dir():
        raise SynthError(f"output path {str(root)!r} is a file; give a folder name")
    if root.exists() and any(root.iterdir()):
        raise SynthError(
            f"output folder {str(root)!r} exists and is not empty; choose a new folder or "
            "remove it first"
        )
    partial = root.parent / f".{root.name}.synth-partial"
    if partial.exists():
        shutil.rmtree(partial)  # left by a killed run with the same output name
    partial.mkdir(parents=True)
    return partial


def write_synthetic_drop(
    root: Path,
    n_patients: int = 12,
    slices_per_patient: int = 6,
    size: int = 512,
    seed: int = 0,
    mask_fraction: float = 0.6,
    dicoms: bool = True,
    broken: bool = True,
    window_set: str = "real",
    progress: bool = False,
    difficulty: str = "easy",
) -> SynthSummary:
    """Write a synthetic drop in the real drop's layout under ``root``.

    Args:
      root: output folder; must not exist or be empty.
      n_patients: synthetic patients; their folder types cycle through all seven, with
        "multi" twice per cycle (`_patient_folder_types`).
      slices_per_patient: consecutive slices per patient.
      size: image height and width in pixels (the real drop: 512).
      seed: fixes every byte written.
      mask_fraction: share of bleeding slices given segmentation polygons (0..1).
      dicoms: also write ``dcms/<ID>.dcm`` for every rendered slice.
      broken: plant a corrupt JPEG, a missing window, malformed polygons and a corrupt DICOM.
      window_set: "real" (brain_window folders) or "brief" (bone_window folders).
      progress: show a tqdm bar.
      difficulty: phantom setting, one of `difficulty.DIFFICULTIES`. The library keeps "easy"
        (today's phantom, byte for byte) for its callers; `fusion-synth` defaults to
        `difficulty.DEFAULT_DIFFICULTY` ("real").

    Returns:
      A `SynthSummary` of the files, counts, flagged ids, broken inputs and per-slice truth.

    Raises:
      SynthError: invalid arguments, or ``root`` exists and is not empty.
    """
    _check_arguments(n_patients, slices_per_patient, size, mask_fraction, window_set)
    _check_difficulty(difficulty)
    root = Path(root)
    windows = WINDOW_SETS[window_set]
    partial = _prepare_partial(root)
    misc = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    try:
        truth, detection, tracing, n_dicoms = _write_slices(
            partial, n_patients, slices_per_patient, size, seed, mask_fraction, dicoms,
            windows, progress, misc, difficulty,
        )
        labels_rows = _label_rows(truth, misc)
        flagged = _choose_flagged(truth, misc)
        broken_inputs: list[BrokenInput] = []
        if broken:
            broken_inputs = _plant_broken(partial, truth, detection, flagged, windows, dicoms,
                                          misc)
            forms = {p.id: p.correct_form for ps in detection.values() for p in ps}
            truth = [replace(s, correct_form=forms.get(s.id, s.correct_form)) for s in truth]
        _write_tables(partial, labels_rows, flagged, detection, tracing, size, misc)
        n_renders = sum(1 for _ in (partial / "renders").rglob("*.jpg"))
        if root.exists():
            root.rmdir()  # empty (checked above); rename needs the name free
        os.replace(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    counts = {t: 0 for t in FOLDER_TYPES}
    for s in truth:
        counts[s.folder_type] += 1
    return SynthSummary(
        root=root,
        counts=counts,
        n_slices=len(truth),
        n_with_polygons=sum(1 for s in truth if s.n_regions),
        n_renders=n_renders,
        n_dicoms=n_dicoms,
        n_label_rows=len(labels_rows),
        windows=windows,
        flagged=tuple(flagged),
        broken=tuple(BrokenInput(b.id, b.kind, b.path.replace(str(partial), str(root)), b.detail)
                     for b in broken_inputs),
        slices=tuple(truth),
        paths={
            "labels": root / LABELS_FILE,
            "flagged": root / FLAGGED_FILE,
            "renders": root / "renders",
            "segmentation": root / SEGMENTATION_DIR,
            "dcms": root / "dcms",
        },
        difficulty=difficulty,
    )


@dataclass
class _PolygonSlice:
    """A slice's polygons waiting to be written into a segmentation file."""

    id: str
    polygons: list[PolygonPoints]
    correct_form: str = ""
    malformed: str = ""  # "" | "truncated" | "x-out-of-range"


def _write_slices(
    partial: Path, n_patients: int, slices_per_patient: int, size: int, seed: int,
    mask_fraction: float, dicoms: bool, windows: Sequence[str], progress: bool,
    misc: np.random.Generator, difficulty: str,
) -> tuple[list[SynthSlice], dict[str, list[_PolygonSlice]], list[_PolygonSlice], int]:
    """Renders and DICOMs of every slice; returns truth and the polygons to write."""
    truth: list[SynthSlice] = []
    detection: dict[str, list[_PolygonSlice]] = {k: [] for k in DETECTION_FILES}
    tracing: list[_PolygonSlice] = []
    n_detection = 0
    n_dicoms = 0
    total = n_patients * slices_per_patient
    cases = iter_synthetic_slices(n_patients, slices_per_patient, size, seed, difficulty)
    for case in tqdm(cases, total=total, disable=not progress, unit="slice", desc="synth"):
        sl = case.slice
        folder = sl.folder_type
        for name in windows:
            _write(partial / "renders" / folder / name / f"{case.id}.jpg",
                   render_window(sl.hu, name))
        if dicoms:
            _write(partial / "dcms" / f"{case.id}.dcm", dicom_bytes(case))
            n_dicoms += 1
        labels = tuple([1 if sl.types else 0] + [int(t in sl.types) for t in TYPE_NAMES])
        n_regions, polygon_file, correct_form = 0, "", ""
        if sl.types and misc.random() < mask_fraction:
            polygons = mask_polygons(sl.mask)
            n_regions = len(polygons)
            if folder == "intraventricular":
                tracing.append(_PolygonSlice(case.id, polygons))
                polygon_file = TRACING_FILE
            else:
                correct_form = CORRECT_FORMS[n_detection % len(CORRECT_FORMS)]
                n_detection += 1
                detection[folder].append(_PolygonSlice(case.id, polygons, correct_form))
                polygon_file = DETECTION_FILES[folder]
        truth.append(SynthSlice(case.id, case.patient_id, case.patient_index, folder, labels,
                                int(sl.mask.sum()), n_regions, polygon_file, correct_form))
    return truth, detection, tracing, n_dicoms


def _label_rows(truth: Sequence[SynthSlice], misc: np.random.Generator) -> list[list[str]]:
    """Rendered slices plus twice as many label-only slices (the real table is far larger)."""
    ids = _IdSource(misc)
    ids.used.update(s.id for s in truth)
    rows = [[s.id, *map(str, s.labels)] for s in truth]
    for _ in range(2 * len(truth)):
        types = [0] * len(TYPE_NAMES)
        if misc.random() < 0.15:
            for k in misc.choice(len(TYPE_NAMES), size=int(misc.integers(1, 3)), replace=False):
                types[int(k)] = 1
        rows.append([ids.new(9), str(int(any(types))), *map(str, types)])
    rows.sort(key=lambda r: r[0])
    return rows


def _choose_flagged(truth: Sequence[SynthSlice], misc: np.random.Generator) -> list[str]:
    count = min(len(truth) // 2, max(1, len(truth) // 24), 8)
    picks = misc.choice(len(truth), size=count, replace=False) if count else []
    return [truth[int(i)].id for i in sorted(picks)]


def _plant_broken(
    partial: Path, truth: Sequence[SynthSlice], detection: Mapping[str, list[_PolygonSlice]],
    flagged: Sequence[str], windows: Sequence[str], dicoms: bool, misc: np.random.Generator,
) -> list[BrokenInput]:
    """Break a few inputs in place (distinct, unflagged slices); return what was broken."""
    broken: list[BrokenInput] = []
    with_polygons = {p.id for ps in detection.values() for p in ps}
    # Keep slices with polygons out of the file-level breakage so their masks stay usable.
    pool = [s for s in truth if s.id not in set(flagged) and s.id not in with_polygons]
    order = [pool[int(i)] for i in misc.permutation(len(pool))]

    if order:
        s = order.pop()
        path = partial / "renders" / s.folder_type / windows[0] / f"{s.id}.jpg"
        data = path.read_bytes()
        garbage = misc.integers(0, 256, size=300, dtype=np.uint8).tobytes()
        path.write_bytes(data[:200] + garbage)
        broken.append(BrokenInput(s.id, "corrupt-jpeg", str(path),
                                  "JPEG cut after 200 bytes and followed by 300 random bytes"))
    if order:
        s = order.pop()
        path = partial / "renders" / s.folder_type / windows[-1] / f"{s.id}.jpg"
        path.unlink()
        broken.append(BrokenInput(s.id, "missing-window", str(path),
                                  f"window {windows[-1]} not rendered"))
    if dicoms and order:
        s = order.pop()
        path = partial / "dcms" / f"{s.id}.dcm"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - len(data) // 3])
        broken.append(BrokenInput(s.id, "corrupt-dicom", str(path),
                                  "file truncated inside the pixel data (last third missing)"))
    # Malformed polygons: Majority must count, so their Correct Label is left empty (NaN).
    candidates = [p for k in sorted(detection) for p in detection[k]]
    picks = misc.permutation(len(candidates))[:2]
    for n, i in enumerate(sorted(int(i) for i in picks)):
        item = candidates[i]
        item.correct_form = "nan"
        item.malformed = "truncated" if n == 0 else "x-out-of-range"
        detail = ("Majority Label JSON cut off" if n == 0 else
                  "Majority Label has a vertex with x = 1.7")
        file_name = next(DETECTION_FILES[k] for k in sorted(detection) if item in detection[k])
        broken.append(BrokenInput(item.id, "malformed-polygon",
                                  str(partial / SEGMENTATION_DIR / file_name), detail))
    return broken


def _write_tables(
    partial: Path, label_rows: Sequence[Sequence[str]], flagged: Sequence[str],
    detection: Mapping[str, list[_PolygonSlice]], tracing: Sequence[_PolygonSlice], size: int,
    misc: np.random.Generator,
) -> None:
    """hemorrhage-labels.csv, flagged.txt and the seven segmentation CSVs."""
    _write(partial / LABELS_FILE, _csv_bytes(("Image", *LABEL_NAMES), label_rows))
    _write(partial / FLAGGED_FILE, b"".join(f"{i}.jpg\r\n".encode() for i in flagged))
    seg = partial / SEGMENTATION_DIR
    case_id = int(misc.integers(1000, 5000))
    for kind in sorted(DETECTION_FILES):
        rows: list[list[str]] = []
        for item in detection[kind]:
            case_id += int(misc.integers(1, 9))
            item_rows = _detection_rows(item.id, case_id, item.polygons, item.correct_form,
                                        size, misc)
            if item.malformed == "truncated":
                text = item_rows[0][7]
                item_rows[0][7] = text[: max(12, len(text) // 2)]
            elif item.malformed == "x-out-of-range":
                polygon = json.loads(item_rows[0][7])
                polygon[0]["x"] = 1.7
                item_rows[0][7] = json.dumps(polygon)
            rows.extend(item_rows)
        if rows:
            # Quirks of the real files: a multi-line Comments cell and quotes inside a cell.
            rows[0][12] = MULTILINE_COMMENT
            rows[0][13] = 'QA: "double-checked"'
        rows.append(_flagged_extra_row(misc, size, case_id + 1))
        data = _csv_bytes(DETECTION_HEADER, rows)
        _write(seg / DETECTION_FILES[kind], data)
        if kind == "subdural":
            _write(seg / SUBDURAL_DUPLICATE_FILE, data)
    rows = []
    for item in tracing:
        case_id += int(misc.integers(1, 9))
        rows.append(_tracing_row(item.id, case_id, item.polygons, size, misc))
    _write(seg / TRACING_FILE, _csv_bytes(TRACING_HEADER, rows))


def _flagged_extra_row(misc: np.random.Generator, size: int, case_id: int) -> list[str]:
    """A row for a slice that is not rendered, in state Flagged (readers drop these rows)."""
    slice_id = f"ID_{int(misc.integers(0, 16**9)):09x}"
    cx, cy, r = (float(v) for v in misc.uniform([0.35, 0.35, 0.03], [0.65, 0.65, 0.06]))
    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    polygon = [(round((cx + r * np.cos(a)) * COORD_GRID) / COORD_GRID,
                round((cy + r * np.sin(a)) * COORD_GRID) / COORD_GRID) for a in angles]
    return [str(case_id), f"{slice_id}.jpg", f"{URL_PREFIX}{slice_id}.jpg", "Flagged",
            repr([json.dumps(_reader_polygon(polygon, size, misc))]), "1", "1",
            _json_polygon(polygon), "1", "", "0.5", "0.5", "", ""]
