"""Shared test fixtures: tiny render JPEGs, tiny DICOM slices, hand-made Cases and drops."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from factories import write_ct

from data_build import renders
from data_build.cases import Case, Skip
from data_build.windows import WINDOW_NAMES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: ../shared/data/real next to the repository (absent in a user's fresh clone).
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

#: A square in the top-left quarter, normalised (x = column, y = row).
SQUARE = ((0.25, 0.25), (0.5, 0.25), (0.5, 0.5), (0.25, 0.5))


def write_jpeg(path: Path, size: int = 64, value: int = 100, seed: int = 0) -> Path:
    """A tiny RGB render JPEG: a grey through the drop's bone colour map."""
    rng = np.random.default_rng(seed)
    grey = np.clip(value + rng.integers(-20, 20, (size, size)), 0, 255).astype(np.uint8)
    bgr = renders.grey_to_rgb(grey)[..., ::-1]
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return path


def write_dicom(
    path: Path,
    hu: np.ndarray,
    *,
    patient_id: str = "ID_patient1",
    spacing: tuple[float, float] | None = (0.5, 0.25),
    intercept: float = -1024.0,
) -> Path:
    """A tiny signed 16-bit CT slice holding `hu` (integers) with the given intercept."""
    return write_ct(path, np.asarray(hu) - intercept, PatientID=patient_id, RescaleIntercept=intercept,
                    RescaleSlope=1.0, PixelSpacing=None if spacing is None else list(spacing))


def render_case(
    root: Path,
    case_id: str,
    *,
    size: int = 64,
    folder_type: str = "subdural",
    labels: tuple[int, ...] | None = (1, 0, 0, 0, 0, 1),
    polygons: Any = (SQUARE,),
    patient_id: str = "",
    spacing: tuple[float, float] | None = None,
    windows: tuple[str, ...] = WINDOW_NAMES,
) -> Case:
    """Write four window JPEGs under root/renders/<type>/<window>/ and return their Case."""
    paths = {
        w: str(write_jpeg(root / "renders" / folder_type / w / f"{case_id}.jpg", size, 60 + 30 * i, i))
        for i, w in enumerate(windows)
    }
    return Case(
        id=case_id,
        source="render",
        render_paths=paths,
        folder_type=folder_type,
        labels=labels,
        polygons=polygons,
        mask_source="correct" if polygons else ("normal" if polygons == () else ""),
        patient_id=patient_id,
        pixel_spacing=spacing,
    )


@dataclass
class FakeDrop:
    """What `drop.discover` returns, built by hand (tests of records do not depend on drop.py)."""

    root: Path
    source: str
    cases: list[Case]
    skips: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    window_set: str = "real"
    stats: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def render_drop(tmp_path: Path) -> FakeDrop:
    """12 render slices of 6 patients at 32x32, masks on most, one normal, one unknown mask."""
    root = tmp_path / "drop"
    cases = []
    for i in range(12):
        kind = "normal" if i == 0 else "subdural"
        cases.append(
            render_case(
                root,
                f"ID_{i:09x}",
                size=32,
                folder_type=kind,
                labels=(0,) * 6 if kind == "normal" else (1, 0, 0, 0, 0, 1),
                polygons=() if kind == "normal" else (None if i == 1 else (SQUARE,)),
                patient_id=f"P{i // 2}",
            )
        )
    return FakeDrop(root=root, source="render", cases=cases)


def write_tiny_synth_drop(root: Path, *, dicoms: bool = False, patients: int = 3) -> Path:
    """A tiny clean synthetic drop (2 slices a patient, 32 px) written by the product's writer."""
    from data_build.synth.writer import write_synthetic_drop

    write_synthetic_drop(root, n_patients=patients, slices_per_patient=2, size=32, broken=False,
                         dicoms=dicoms)
    return root


@pytest.fixture
def synth_drop(tmp_path: Path) -> Path:
    """`write_tiny_synth_drop` in tmp_path/drop (renders only; 6 slices, 1 flagged)."""
    return write_tiny_synth_drop(tmp_path / "drop")
