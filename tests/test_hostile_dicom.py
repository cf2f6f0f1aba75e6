"""Hostile DICOM header values (issue #12 D9): a slice whose HU cannot be trusted is a counted
skip; a nonsense PixelSpacing or ImagePositionPatient is dropped (stored as unknown), counted
and warned, never stored as if it were known."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import write_dicom, write_tiny_synth_drop

from data_build import convert, dicom
from data_build.cases import Case, Skip
from data_build.drop import discover


def _slice(tmp_path: Path, **header: Any) -> Path:
    path = write_dicom(tmp_path / "ID_0000000a1.dcm", np.full((8, 8), 40, np.int16))
    ds = pydicom.dcmread(path)
    for key, value in header.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)
    return path


def _convert(path: Path) -> Any:
    return convert.make_example(Case(id="ID_0000000a1", source="dicom", dicom_path=str(path)),
                                convert.ConvertOptions(source="dicom"))


@pytest.mark.parametrize("slope", ["NaN", "1e30", "0", "inf"])
def test_implausible_rescale_slope_is_a_skip(tmp_path: Path, slope: str) -> None:
    result = _convert(_slice(tmp_path, RescaleSlope=slope))
    assert isinstance(result, Skip) and result.reason == "bad-dicom-header"
    assert "RescaleSlope" in result.detail


def test_nan_intercept_is_a_skip(tmp_path: Path) -> None:
    result = _convert(_slice(tmp_path, RescaleIntercept="NaN"))
    assert isinstance(result, Skip) and result.reason == "bad-dicom-header"


def test_missing_intercept_on_12_bit_unsigned_is_a_skip(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "ID_0000000a1.dcm", np.full((8, 8), 40, np.int16))
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = np.full((8, 8), 1064, np.uint16).tobytes()
    del ds.RescaleIntercept
    ds.save_as(path)
    result = _convert(path)
    assert isinstance(result, Skip) and result.reason == "bad-dicom-header"
    assert "RescaleIntercept" in result.detail


@pytest.mark.parametrize("spacing", [["inf", "0.5"], ["NaN", "0.5"], ["0", "0.5"], ["-1", "-1"]])
def test_nonsense_pixel_spacing_is_unknown(tmp_path: Path, spacing: list[str]) -> None:
    meta = dicom.read_meta(_slice(tmp_path, PixelSpacing=spacing))
    assert meta.pixel_spacing is None and any("PixelSpacing" in p for p in meta.problems)


def test_nan_position_is_unknown(tmp_path: Path) -> None:
    meta = dicom.read_meta(_slice(tmp_path, ImagePositionPatient=["NaN", "0", "1"]))
    assert meta.position is None and any("ImagePositionPatient" in p for p in meta.problems)


def test_discovery_counts_and_warns_dropped_header_values(tmp_path: Path) -> None:
    root = write_tiny_synth_drop(tmp_path / "drop", dicoms=True)
    victim = sorted((root / "dcms").glob("*.dcm"))[0]
    ds = pydicom.dcmread(victim)
    ds.PixelSpacing = ["inf", "0.5"]
    ds.save_as(victim)
    found = discover(root, source="dicom")
    assert found.stats["dicom_header_values_dropped"] == 1
    assert any(victim.stem in w and "PixelSpacing" in w for w in found.warnings)
    case = next(c for c in found.cases if c.id == victim.stem)
    assert case.pixel_spacing is None
