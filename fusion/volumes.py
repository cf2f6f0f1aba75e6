"""Bleed volume of a CT series from its per-slice masks, and the ABC/2 bedside estimate.

Volume (mL) = sum over slices of (mask pixels x row spacing x column spacing, mm^2) x slice
spacing (mm) / 1000. The slice spacing comes from the slices' ImagePositionPatient (median
distance between neighbours, robust to one missing slice), else from SliceThickness.

ABC/2 (Kothari et al., Stroke 1996): A = greatest bleed diameter on the slice with the largest
bleed area, B = the largest diameter perpendicular to A on that slice, C = number of slices with
bleed x slice spacing; volume = A x B x C / 2. It is computed over the whole slice mask (all
regions together), so it is a coarse cross-check, meant for a single compact bleed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from fusion.errors import FusionError


class VolumeError(FusionError, ValueError):
    """Masks and geometry of a series do not fit together (the message says how)."""


@dataclass(frozen=True)
class SeriesVolume:
    """Bleed volume of one series. Lengths in mm, areas in mm^2, volumes in mL.

    Attributes:
      n_slices: slices in the series.
      n_slices_with_bleed: slices whose mask has at least one pixel.
      slice_spacing_mm: distance between slice centres, None when unknown.
      spacing_source: "positions", "thickness" or "unknown".
      volume_ml: mask volume, None when a spacing is unknown.
      abc2_ml: ABC/2 estimate, None when a spacing is unknown or there is no bleed.
      a_mm, b_mm, c_mm: the ABC/2 diameters (None as above).
      largest_slice: index (in series order) of the slice with the largest bleed area, None
        without bleed.
      largest_area_mm2: its area (None when pixel spacing is unknown).
      largest_area_pixels: its area in pixels.
    """

    n_slices: int
    n_slices_with_bleed: int
    slice_spacing_mm: float | None
    spacing_source: str
    volume_ml: float | None
    abc2_ml: float | None
    a_mm: float | None
    b_mm: float | None
    c_mm: float | None
    largest_slice: int | None
    largest_area_mm2: float | None
    largest_area_pixels: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slice_spacing(
    positions: Sequence[Sequence[float] | None] | None,
    slice_thickness: float | None = None,
) -> tuple[float | None, str]:
    """Distance between neighbouring slice centres, and where it came from.

    Args:
      positions: ImagePositionPatient (x, y, z) mm per slice, in series order; None entries
        (unknown) make the positions unusable.
      slice_thickness: SliceThickness mm, the fallback.

    Returns:
      (spacing mm or None, "positions" | "thickness" | "unknown").
    """
    if positions is not None and len(positions) >= 2 and all(p is not None for p in positions):
        pos = np.asarray(positions, dtype=np.float64)
        steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        steps = steps[steps > 1e-6]  # duplicate positions say nothing about spacing
        if steps.size:
            return float(np.median(steps)), "positions"
    if slice_thickness is not None and math.isfinite(slice_thickness) and slice_thickness > 0:
        return float(slice_thickness), "thickness"
    return None, "unknown"


def _corner_points(mask: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """The four corners of every mask pixel, in mm ([M, 2] as (x = column, y = row))."""
    rows, cols = np.nonzero(mask)
    corners = [(0, 0), (0, 1), (1, 0), (1, 1)]
    pts = np.concatenate(
        [np.stack([(cols + dc) * col_mm, (rows + dr) * row_mm], axis=1) for dr, dc in corners]
    )
    return pts.astype(np.float32)


def diameters(mask: np.ndarray, row_mm: float = 1.0, col_mm: float = 1.0) -> tuple[float, float]:
    """Greatest diameter A of a 2-D mask and the largest extent B perpendicular to it, in mm.

    Pixels count with their full extent (corners), so a one-pixel mask measures one pixel.

    Returns:
      (A, B); (0, 0) for an empty mask.
    """
    import cv2

    if not np.any(mask):
        return 0.0, 0.0
    pts = _corner_points(np.asarray(mask, bool), row_mm, col_mm)
    hull = cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    a = float(dist[i, j])
    u = (hull[j] - hull[i]) / a
    perp = np.array([-u[1], u[0]])
    proj = hull @ perp
    return a, float(proj.max() - proj.min())


def _spacing_rows(pixel_spacing: Any, n: int) -> np.ndarray | None:
    if pixel_spacing is None:
        return None
    arr = np.asarray(pixel_spacing, dtype=np.float64)
    if arr.shape == (2,):
        arr = np.tile(arr, (n, 1))
    if arr.shape != (n, 2):
        raise VolumeError(
            f"pixel_spacing must be (row, col) or [N, 2] for {n} slices; got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        return None
    return arr


def series_volume(
    masks: np.ndarray,
    pixel_spacing: Any,
    positions: Sequence[Sequence[float] | None] | None = None,
    slice_thickness: float | None = None,
    known_spacing: tuple[float | None, str] | None = None,
) -> SeriesVolume:
    """Bleed volume and ABC/2 of one series.

    Args:
      masks: [N, H, W] bool, slices in series order (as `predict.group_series` orders them).
      pixel_spacing: (row, col) mm, or [N, 2] per slice, or None when unknown.
      positions: ImagePositionPatient per slice (mm), same order, or None.
      slice_thickness: SliceThickness (mm), used when positions are missing.
      known_spacing: (slice spacing mm or None, source) already worked out from the series geometry
        (`fusion.series.SeriesGroup`: along the slice normal, gaps excluded); overrides
        ``positions`` and ``slice_thickness``.

    Returns:
      A `SeriesVolume`; volumes are None when pixel or slice spacing is unknown.
    """
    m = np.asarray(masks).astype(bool)
    if m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 3:
        raise VolumeError(f"masks must be [N, H, W]; got shape {np.shape(masks)}")
    n = m.shape[0]
    if positions is not None and len(positions) != n:
        raise VolumeError(f"{len(positions)} positions for {n} slices")
    spacing = _spacing_rows(pixel_spacing, n)
    if known_spacing is not None:
        dz, source = known_spacing
    else:
        dz, source = slice_spacing(positions, slice_thickness)
    pixels = m.reshape(n, -1).sum(axis=1)
    with_bleed = int(np.count_nonzero(pixels))
    areas_mm2 = pixels * spacing[:, 0] * spacing[:, 1] if spacing is not None else None
    if with_bleed == 0:
        largest = None
    else:
        # Largest in mm^2 when known (spacing can differ by slice), else in pixels.
        largest = int(np.argmax(areas_mm2 if areas_mm2 is not None else pixels))
    volume = None
    abc2 = a = b = c = None
    if areas_mm2 is not None and dz is not None:
        volume = float(areas_mm2.sum() * dz / 1000.0)
        if largest is not None:
            a, b = diameters(m[largest], spacing[largest, 0], spacing[largest, 1])
            c = with_bleed * dz
            abc2 = a * b * c / 2.0 / 1000.0
    return SeriesVolume(
        n_slices=n,
        n_slices_with_bleed=with_bleed,
        slice_spacing_mm=dz,
        spacing_source=source,
        volume_ml=volume,
        abc2_ml=abc2,
        a_mm=a,
        b_mm=b,
        c_mm=c,
        largest_slice=largest,
        largest_area_mm2=(
            float(areas_mm2[largest]) if areas_mm2 is not None and largest is not None else None
        ),
        largest_area_pixels=int(pixels[largest]) if largest is not None else 0,
    )
