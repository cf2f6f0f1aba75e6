"""Every polygon form of the drop's segmentation CSVs; rasterisation; mask -> polygons.

Forms (see ``shared/docs/dataset-format.md``):

- Detection ``Majority Label``: one polygon as JSON, ``[{"x": 0.537109375, "y": 0.89453125}, ...]``.
- Detection ``Correct Label``: all of the slice's polygons as a Python repr with single quotes,
  ``[[{'x': 0.53, 'y': 0.89}, ...], [...]]`` (``json.loads`` fails on it).
- Tracing ``ROI``: the same {x, y} form, one polygon or a list of polygons, either quote style.
- Empty values: ``[]``, ``[[]]``, ``[[], []]``, NaN, None, ``""``: no polygon.
- Detection ``All Labels``: a Python list of JSON strings, one per reader (`parse_all_labels`).

Coordinates are normalised: x is the column / width, y the row / height, origin top-left.

Rasterisation convention (`rasterise`): vertex (x, y) lands on pixel
``(row, col) = (round(y * height), round(x * width))`` (coordinate x size, never x (size - 1)),
clamped into the image; the polygon through those vertex pixels is filled with `cv2.fillPoly`
(8-connected edges), which covers the interior and **every pixel its edges pass through, both
ends included**. So the square (0.25, 0.25)-(0.5, 0.5) on an 8 x 8 image covers rows and
columns 2..4 (3 x 3 = 9 pixels). This is the convention that `cv2.findContours` inverts exactly
(a contour runs through the centres of a mask's boundary pixels), so real masks survive
mask -> polygons -> mask (`mask_to_polygons`).
"""
from __future__ import annotations

import ast
import functools
import json
import math
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from data_build.cases import Polygon
from data_build.errors import DataBuildError

#: Cell texts meaning "no value" (how pandas, Python and JSON spell a missing value).
_EMPTY_WORDS = frozenset({"nan", "none", "null"})

#: Coordinates this far outside [0, 1] are clamped; further out they are an error.
TOLERANCE = 1e-3


class PolygonError(DataBuildError, ValueError):
    """A polygon field cannot be parsed: bad syntax, non-numeric or out-of-range coordinates,
    or fewer than 3 points."""


def _is_empty_scalar(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _load(text: str) -> Any:
    """Parse JSON (double quotes) or a Python literal (single quotes); never `eval`."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: a hostile cell of thousands of nested brackets; let the literal
        # parser below reject it with its own (bounded) nesting limit.
        pass
    if "'" in text and '"' not in text:
        # The drop's Correct Label is a Python repr with single quotes only: as JSON with the
        # quotes swapped it parses ~10x faster than `ast` (discovery is serial, in the main
        # process). Whatever JSON refuses (True, tuples, escapes) goes to `ast` as before.
        try:
            return json.loads(text.replace("'", '"'))
        except (ValueError, RecursionError):
            pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        snippet = text if len(text) <= 80 else text[:77] + "..."
        raise PolygonError(
            f"polygon field is neither JSON nor a Python literal ({type(err).__name__}): "
            f"{snippet!r}"
        ) from None


def _coordinate(point: Any, key: str) -> float:
    value = point[key]
    # bool is an int subclass; strings are not coordinates even when they look numeric.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolygonError(f"coordinate {key}={value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise PolygonError(f"coordinate {key}={value!r} is not finite")
    if value < -TOLERANCE or value > 1.0 + TOLERANCE:
        raise PolygonError(
            f"coordinate {key}={value!r} is outside [0, 1]: coordinates must be normalised "
            "(column / width, row / height)"
        )
    return min(max(value, 0.0), 1.0)


def _polygon(points: Sequence[Any]) -> Polygon:
    out = []
    for point in points:
        if not isinstance(point, dict) or "x" not in point or "y" not in point:
            raise PolygonError(f"polygon point {point!r} is not a {{'x': .., 'y': ..}} mapping")
        out.append((_coordinate(point, "x"), _coordinate(point, "y")))
    if len(out) < 3:
        raise PolygonError(f"a polygon needs at least 3 points, got {len(out)}")
    return tuple(out)


def _from_structure(value: Any) -> tuple[Polygon, ...]:
    """A list of points (one polygon) or a list of lists of points (several); empties dropped."""
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise PolygonError(f"expected a list of points or of polygons, got {type(value).__name__}")
    if not value:
        return ()
    if all(isinstance(item, dict) for item in value):
        return (_polygon(value),)
    polygons = []
    for item in value:
        if isinstance(item, tuple):
            item = list(item)
        if not isinstance(item, list):
            raise PolygonError(
                f"expected a list of polygons, found an item of type {type(item).__name__}"
            )
        if not item:  # `[[]]`, `[[], []]`: empty slots seen in Correct Label
            continue
        polygons.append(_polygon(item))
    return tuple(polygons)


def parse_polygons(value: Any) -> tuple[Polygon, ...]:
    """Parse any polygon field of the drop (Majority, Correct, ROI).

    Args:
      value: the CSV cell: a string in JSON or Python-literal form, an already parsed list,
        or an empty value (None, NaN, "", ``[]``, ``[[]]``, ``[[], []]``).

    Returns:
      The polygons, each a tuple of normalised (x, y) float vertices; () when empty.

    Raises:
      PolygonError: bad syntax, a non-numeric or non-finite coordinate, a coordinate outside
        [0, 1] by more than `TOLERANCE` (within it, it is clamped), or fewer than 3 points.
    """
    if _is_empty_scalar(value):
        return ()
    if isinstance(value, str):
        return _parse_text(value.strip())
    return _from_structure(value)


@functools.lru_cache(maxsize=256)
def _parse_text(text: str) -> tuple[Polygon, ...]:
    """`parse_polygons` of a stripped string, cached: a Detection file repeats a slice's whole
    ``Correct Label`` on each of its rows (issue 14). The result is immutable; a bad field is
    not cached and raises again on every row."""
    if text.lower() in _EMPTY_WORDS:
        return ()
    value = _load(text)
    if _is_empty_scalar(value):
        return ()
    return _from_structure(value)


#: The Detection ``Majority Label`` (one polygon, JSON) and ``Correct Label`` (all polygons,
#: Python repr) and the Tracing ``ROI`` field all go through the same tolerant parser.
parse_majority = parse_polygons
parse_correct = parse_polygons
parse_roi = parse_polygons


def parse_all_labels(value: Any) -> tuple[tuple[Polygon, ...], ...]:
    """Parse the Detection ``All Labels`` field: one entry per reader.

    Args:
      value: a Python list literal of JSON strings, each one reader's polygon(s).

    Returns:
      One tuple of polygons per reader (a reader with an empty label gives ()).

    Raises:
      PolygonError: as `parse_polygons`, or when the outer value is not a list.
    """
    if _is_empty_scalar(value):
        return ()
    outer = _load(value.strip()) if isinstance(value, str) else value
    if not isinstance(outer, (list, tuple)):
        raise PolygonError(f"All Labels must be a list, got {type(outer).__name__}")
    return tuple(parse_polygons(item) for item in outer)


def _vertex_pixels(polygon: Polygon, height: int, width: int) -> np.ndarray:
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    # Round half up (floor(v + 0.5)) so k/512 on a 256 image moves consistently.
    cols = np.clip(np.floor(points[:, 0] * width + 0.5), 0, width - 1)
    rows = np.clip(np.floor(points[:, 1] * height + 0.5), 0, height - 1)
    return np.stack([cols, rows], axis=1).astype(np.int32)


def rasterise(polygons: Iterable[Polygon], height: int, width: int) -> np.ndarray:
    """Fill polygons into a binary mask (the union of their regions).

    Args:
      polygons: normalised polygons (see module docstring for the pixel convention).
      height: mask height in pixels, > 0.
      width: mask width in pixels, > 0.

    Returns:
      [height, width] uint8, 1 inside any polygon (edges and vertices included), else 0.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height} x {width}")
    mask = np.zeros((height, width), dtype=np.uint8)
    pixel_polygons = [_vertex_pixels(p, height, width) for p in polygons if len(p)]
    # One fillPoly per polygon: a single call with several would XOR overlapping regions
    # (even-odd fill) instead of taking their union.
    for points in pixel_polygons:
        cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8)
    return mask


def mask_to_polygons(mask: np.ndarray, quantise: int = 512) -> tuple[Polygon, ...]:
    """Outer contours of a binary mask as normalised polygons (inverse of `rasterise`).

    Holes are not represented (`rasterise` fills each polygon), so a mask with holes comes
    back filled. Components of one or two boundary points (single pixels, thin lines) are
    padded to 3 vertices so they survive the round trip.

    Args:
      mask: [H, W] array, nonzero = inside (bool, 0/1 or 0/255).
      quantise: coordinates are rounded to multiples of 1 / quantise (512 = the drop's grid).

    Returns:
      One polygon per connected component (8-connectivity), vertices normalised to [0, 1].
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    if quantise <= 0:
        raise ValueError(f"quantise must be positive, got {quantise}")
    height, width = mask.shape
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.float64)  # (col, row)
        xs = np.round(points[:, 0] / width * quantise) / quantise
        ys = np.round(points[:, 1] / height * quantise) / quantise
        polygon = [(float(x), float(y)) for x, y in zip(xs, ys)]
        while len(polygon) < 3:
            polygon.append(polygon[-1])
        polygons.append(tuple(polygon))
    return tuple(polygons)
