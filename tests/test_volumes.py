"""fusion.volumes on synthetic series of known geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fusion.volumes import VolumeError, diameters, series_volume, slice_spacing


def sphere_series(
    radius_mm: float, pixel_mm: float, slice_mm: float, size: int = 96
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Masks of a ball centred in the volume, sampled at pixel and slice centres."""
    n = int(math.ceil(2 * radius_mm / slice_mm)) + 4
    z = (np.arange(n) - (n - 1) / 2) * slice_mm
    c = (np.arange(size) - (size - 1) / 2) * pixel_mm
    yy, xx = np.meshgrid(c, c, indexing="ij")
    masks = np.stack([(xx**2 + yy**2 + zi**2) <= radius_mm**2 for zi in z])
    positions = [(-50.0, -50.0, float(zi)) for zi in z]
    return masks, positions


def test_sphere_volume_and_abc2() -> None:
    r = 30.0
    masks, positions = sphere_series(r, pixel_mm=0.8, slice_mm=2.5)
    v = series_volume(masks, (0.8, 0.8), positions=positions)
    truth = 4 / 3 * math.pi * r**3 / 1000.0  # 113.1 mL
    assert v.spacing_source == "positions"
    assert v.slice_spacing_mm == pytest.approx(2.5)
    assert v.volume_ml == pytest.approx(truth, rel=0.03)
    # ABC/2 of a sphere is (2r)^3 / 2 = 4 r^3, 4.5 % below the true volume
    assert v.abc2_ml == pytest.approx(truth, rel=0.10)
    assert v.a_mm == pytest.approx(2 * r, rel=0.05)
    assert v.b_mm == pytest.approx(2 * r, rel=0.05)
    mid = len(masks) // 2
    assert v.largest_slice in (mid - 1, mid, mid + 1)
    assert v.largest_area_mm2 == pytest.approx(math.pi * r**2, rel=0.05)


def test_thickness_fallback_and_unknown() -> None:
    masks, _ = sphere_series(10.0, 1.0, 2.0, size=40)
    v = series_volume(masks, (1.0, 1.0), positions=None, slice_thickness=2.0)
    assert v.spacing_source == "thickness"
    assert v.volume_ml == pytest.approx(4 / 3 * math.pi * 1000 / 1000, rel=0.06)
    unknown = series_volume(masks, (1.0, 1.0))
    assert unknown.spacing_source == "unknown" and unknown.volume_ml is None
    assert unknown.abc2_ml is None and unknown.n_slices_with_bleed > 0
    no_pixel = series_volume(masks, None, slice_thickness=2.0)
    assert no_pixel.volume_ml is None and no_pixel.largest_area_mm2 is None
    assert no_pixel.largest_area_pixels > 0


def test_empty_series() -> None:
    v = series_volume(np.zeros((3, 8, 8), bool), (1.0, 1.0), slice_thickness=5.0)
    assert v.volume_ml == 0.0 and v.abc2_ml is None and v.largest_slice is None
    assert v.n_slices_with_bleed == 0


def test_slice_spacing_rules() -> None:
    pos = [(0, 0, 0.0), (0, 0, 5.0), (0, 0, 10.0), (0, 0, 20.0)]  # one slice missing
    assert slice_spacing(pos) == (5.0, "positions")
    assert slice_spacing([(0, 0, 1.0), None], 3.0) == (3.0, "thickness")
    assert slice_spacing([(0, 0, 1.0)], None) == (None, "unknown")


def test_diameters_rectangle() -> None:
    m = np.zeros((20, 20), bool)
    m[5:8, 2:12] = True  # 3 rows x 10 columns
    a, b = diameters(m, row_mm=1.0, col_mm=2.0)  # 20 mm wide, 3 mm tall
    assert a == pytest.approx(math.hypot(20, 3))
    # perpendicular to the diagonal, a rectangle spans 2 w h / diagonal
    assert b == pytest.approx(2 * 20 * 3 / math.hypot(20, 3))
    assert diameters(np.zeros((4, 4), bool)) == (0.0, 0.0)


def test_bad_shapes() -> None:
    with pytest.raises(VolumeError, match="positions"):
        series_volume(np.zeros((3, 4, 4)), (1, 1), positions=[(0, 0, 0)])
    with pytest.raises(VolumeError, match="pixel_spacing"):
        series_volume(np.zeros((3, 4, 4)), [1, 1, 1])
