"""How hard a bleed is to see: HU inside the mask against a ring of brain around it.

The measurement of issue 10's table, so that a phantom can be compared with real CT the same
way: per bleeding slice, the median HU inside the bleed mask, the median and standard deviation
of the HU in a ring of brain around it (ring pixels outside [0, 80] HU are bone, air, fat or
CSF, which a reader would not call "the brain next to the bleed"), their difference (the
contrast) and the mask area in pixels at 512 x 512. `summarise` turns the per-slice figures into
percentiles. Pure NumPy/OpenCV; nothing here reads files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

#: Width of the ring of brain around a bleed, pixels at 512 x 512 (issue 10's table).
RING_PX_AT_512 = 7
#: Ring pixels outside this HU range are not brain (bone, air, fat, CSF, other blood).
RING_HU_RANGE = (0.0, 80.0)
#: Percentiles quoted in the table.
PERCENTILES: tuple[int, ...] = (10, 50, 90)
#: Per-slice figures, in table order.
FIGURES: tuple[str, ...] = ("bleed_hu", "ring_hu", "contrast", "area_px512", "ring_std")
#: Issue 10's figures on real CT-ICH slices (p10, p50, p90); area as the middle of its ranges.
REAL_CT: dict[str, tuple[float, float, float]] = {
    "bleed_hu": (43.0, 56.0, 66.0),
    "ring_hu": (28.0, 36.0, 40.0),
    "contrast": (12.0, 20.0, 28.0),
    "area_px512": (212.0, 1500.0, 6550.0),
    "ring_std": (5.9, 6.8, 9.9),
}


@dataclass(frozen=True)
class BleedContrast:
    """The figures of one bleeding slice.

    Attributes:
      bleed_hu: median HU inside the mask.
      ring_hu: median HU of the brain ring around the mask.
      contrast: ``bleed_hu - ring_hu``, HU.
      area_px512: mask area in pixels, scaled to a 512 x 512 image.
      ring_std: standard deviation of the ring's HU.
    """

    bleed_hu: float
    ring_hu: float
    contrast: float
    area_px512: float
    ring_std: float


def ring_width(side: int) -> int:
    """The ring's width in pixels on a slice `side` pixels high (`RING_PX_AT_512` scaled)."""
    return max(1, int(round(RING_PX_AT_512 * side / 512.0)))


def brain_ring(hu: np.ndarray, mask: np.ndarray, side: int | None = None) -> np.ndarray:
    """Bool [H, W] ring of brain, `RING_PX_AT_512` px wide at 512 (scaled), around ``mask``.

    Args:
      hu: [H, W] HU (any float or int dtype).
      mask: [H, W] 0/1 bleed mask.
      side: the whole slice's height in pixels when `hu` is a crop of it (default: its own).
    """
    width = ring_width(side or hu.shape[0])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    inside = mask.astype(bool)
    grown = cv2.dilate(inside.astype(np.uint8), kernel).astype(bool)
    lo, hi = RING_HU_RANGE
    return grown & ~inside & (hu >= lo) & (hu <= hi)


def bleed_contrast(hu: np.ndarray, mask: np.ndarray) -> BleedContrast | None:
    """The figures of one slice, or None when it has no bleed or no brain around it.

    Args:
      hu: [H, W] HU, square.
      mask: [H, W] 0/1 bleed mask (union of every type).
    """
    inside = mask.astype(bool)
    if not inside.any():
        return None
    ring = brain_ring(hu, mask)
    if ring.sum() < 3:
        return None
    bleed_hu = float(np.median(hu[inside]))
    ring_hu = float(np.median(hu[ring]))
    area = float(inside.sum()) * (512.0 / hu.shape[0]) ** 2
    return BleedContrast(bleed_hu, ring_hu, bleed_hu - ring_hu, area, float(np.std(hu[ring])))


def summarise(
    rows: Iterable[BleedContrast], percentiles: Sequence[int] = PERCENTILES
) -> dict[str, tuple[float, ...]]:
    """Percentiles of each figure over slices: figure name -> one value per percentile."""
    table = [[getattr(r, f) for f in FIGURES] for r in rows]
    if not table:
        raise ValueError("no bleeding slice to measure; write a larger drop")
    values = np.percentile(np.asarray(table, dtype=np.float64), list(percentiles), axis=0)
    return {f: tuple(float(v) for v in values[:, i]) for i, f in enumerate(FIGURES)}
