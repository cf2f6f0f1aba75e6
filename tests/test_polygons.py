"""Tests for data_build.polygons: every polygon form, rasterisation exactness, round trips."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_build import polygons
from data_build.polygons import (
    PolygonError,
    mask_to_polygons,
    parse_all_labels,
    parse_correct,
    parse_majority,
    parse_polygons,
    parse_roi,
    rasterise,
)

REAL_CASES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real" / "xn-cases"

SQUARE = ((0.25, 0.25), (0.5, 0.25), (0.5, 0.5), (0.25, 0.5))


def test_majority_json_form_from_format_doc() -> None:
    text = '[{"x": 0.537109375, "y": 0.89453125}, {"x": 0.5, "y": 0.9}, {"x": 0.52, "y": 0.95}]'
    assert parse_majority(text) == (((0.537109375, 0.89453125), (0.5, 0.9), (0.52, 0.95)),)


def test_correct_python_repr_holds_all_polygons() -> None:
    text = (
        "[[{'x': 0.53, 'y': 0.89}, {'x': 0.6, 'y': 0.89}, {'x': 0.6, 'y': 0.95}], "
        "[{'x': 0.1, 'y': 0.2}, {'x': 0.2, 'y': 0.2}, {'x': 0.2, 'y': 0.3}, {'x': 0.1, 'y': 0.3}]]"
    )
    polygons = parse_correct(text)
    assert len(polygons) == 2
    assert polygons[0] == ((0.53, 0.89), (0.6, 0.89), (0.6, 0.95))
    assert len(polygons[1]) == 4


@pytest.mark.parametrize(
    "empty",
    ["[]", "[[]]", "[[], []]", " [ ] ", float("nan"), None, "", "   ", "nan", "NaN", "None"],
)
def test_empty_forms(empty: object) -> None:
    assert parse_polygons(empty) == ()


def test_empty_slots_are_dropped_next_to_real_polygons() -> None:
    text = "[[], [{'x': 0.1, 'y': 0.1}, {'x': 0.2, 'y': 0.1}, {'x': 0.2, 'y': 0.2}]]"
    assert len(parse_correct(text)) == 1


@pytest.mark.parametrize(
    "text",
    [
        '[{"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]',
        "[{'x': 0.1, 'y': 0.1}, {'x': 0.2, 'y': 0.1}, {'x': 0.2, 'y': 0.2}]",
        '[[{"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]]',
    ],
)
def test_roi_single_or_list_either_quotes(text: str) -> None:
    assert parse_roi(text) == (((0.1, 0.1), (0.2, 0.1), (0.2, 0.2)),)


def test_roi_several_polygons() -> None:
    one = '[{"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]'
    assert len(parse_roi(f"[{one}, {one}]")) == 2


def test_all_labels_list_of_json_strings() -> None:
    reader = '[{"x": 0.11, "y": 0.12}, {"x": 0.21, "y": 0.12}, {"x": 0.21, "y": 0.22}]'
    text = repr([reader, "[]", reader])
    readers = parse_all_labels(text)
    assert len(readers) == 3 and readers[1] == ()
    assert readers[0][0][0] == (0.11, 0.12)


def test_integer_coordinates_and_extra_keys_accepted() -> None:
    text = '[{"x": 0, "y": 0, "id": 3}, {"x": 1, "y": 0}, {"x": 1, "y": 1}]'
    assert parse_polygons(text) == (((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)),)


def test_clamps_within_tolerance() -> None:
    text = '[{"x": -0.0005, "y": 0.2}, {"x": 1.0009, "y": 0.2}, {"x": 0.5, "y": 1.0}]'
    assert parse_polygons(text) == (((0.0, 0.2), (1.0, 0.2), (0.5, 1.0)),)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"x": 0.1, "y": 0.1}, {"x": 0.2, "y": 0.1}', "neither JSON"),  # cut off
        ("[{'x': 0.1, 'y': 0.1}, {'x': 0.2, 'y': 0.1}]", "at least 3"),
        ('[{"x": "a", "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]', "not a number"),
        ('[{"x": "0.1", "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]', "not a number"),
        ('[{"x": 1.5, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]', "outside"),
        ('[{"x": -0.01, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]', "outside"),
        ('[{"x": NaN, "y": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]', "not finite"),
        ('[{"x": 0.1}, {"x": 0.2, "y": 0.1}, {"x": 0.2, "y": 0.2}]', "mapping"),
        ('{"x": 0.1, "y": 0.2}', "expected a list"),
        ("__import__('os').system('true')", "neither JSON"),  # never evaluated
        (
            "[[{'x': 0.1, 'y': 0.1}, {'x': 0.2, 'y': 0.1}, {'x': 0.2, 'y': 0.2}], 5]",
            "list of polygons",
        ),
    ],
)
def test_malformed_raises(text: str, message: str) -> None:
    with pytest.raises(PolygonError, match=message):
        parse_polygons(text)


def test_polygon_error_is_value_error() -> None:
    assert issubclass(PolygonError, ValueError)


# --- rasterise -------------------------------------------------------------------------------


def test_square_covers_rows_and_cols_2_to_4_inclusive() -> None:
    mask = rasterise([SQUARE], 8, 8)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:5, 2:5] = 1
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)


def test_x_is_column_y_is_row_and_size_not_size_minus_1() -> None:
    # A thin horizontal bar: x spans 0.125..0.75 (cols 1..6), y spans 0.5..0.625 (rows 4..5).
    bar = ((0.125, 0.5), (0.75, 0.5), (0.75, 0.625), (0.125, 0.625))
    mask = rasterise([bar], 8, 8)
    assert set(np.unique(np.nonzero(mask)[0])) == {4, 5}
    assert set(np.unique(np.nonzero(mask)[1])) == {1, 2, 3, 4, 5, 6}
    # Non-square image: x scales with the width, y with the height.
    mask = rasterise([SQUARE], 8, 16)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 4, 4, 8)


def test_coordinate_one_is_clamped_to_last_pixel() -> None:
    full = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    assert rasterise([full], 8, 8).sum() == 64


def test_triangle_exact_pixels() -> None:
    triangle = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5))  # vertices (0,0), (4,0), (0,4) on 8x8
    mask = rasterise([triangle], 8, 8)
    expected = np.zeros((8, 8), np.uint8)
    for row in range(5):
        expected[row, : 5 - row] = 1
    np.testing.assert_array_equal(mask, expected)


def test_union_of_overlapping_regions() -> None:
    other = ((0.375, 0.375), (0.625, 0.375), (0.625, 0.625), (0.375, 0.625))  # rows/cols 3..5
    mask = rasterise([SQUARE, other], 8, 8)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:5, 2:5] = 1
    expected[3:6, 3:6] = 1
    np.testing.assert_array_equal(mask, expected)  # overlap stays filled (no even-odd XOR)


def test_empty_polygons_give_empty_mask() -> None:
    assert rasterise((), 4, 5).shape == (4, 5)
    assert rasterise((), 4, 5).sum() == 0
    with pytest.raises(ValueError):
        rasterise((), 0, 5)


# --- mask -> polygons --------------------------------------------------------------------------


def test_mask_to_polygons_round_trip_exact_on_shapes() -> None:
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (20, 30), 9, 255, -1)
    mask[5:9, 40:60] = 255
    mask[50, 50] = 255  # single pixel
    polygons = mask_to_polygons(mask, quantise=64)
    assert len(polygons) == 3
    assert all(len(p) >= 3 for p in polygons)
    assert all(0 <= v <= 1 for p in polygons for xy in p for v in xy)
    np.testing.assert_array_equal(rasterise(polygons, 64, 64), (mask > 0).astype(np.uint8))


def test_mask_to_polygons_quantises() -> None:
    mask = np.zeros((100, 100), np.uint8)
    mask[10:30, 10:30] = 1
    for polygon in mask_to_polygons(mask, quantise=512):
        for x, y in polygon:
            assert math.isclose(x * 512, round(x * 512)) and math.isclose(y * 512, round(y * 512))


def test_mask_to_polygons_empty() -> None:
    assert mask_to_polygons(np.zeros((8, 8), bool)) == ()


def test_real_masks_round_trip() -> None:
    masks = sorted(REAL_CASES.glob("*/mask.png")) if REAL_CASES.is_dir() else []
    if not masks:
        pytest.skip("real xn-cases masks not present (../shared/data/real/xn-cases)")
    assert len(masks) == 5
    for path in masks:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0
        height, width = mask.shape
        back = rasterise(mask_to_polygons(mask), height, width).astype(bool)
        iou = (mask & back).sum() / (mask | back).sum()
        assert iou >= 0.95, (path, iou)


def test_single_quoted_correct_label_needs_no_python_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # Discovery parses every segmentation row in the main process; `ast` made the drop's
    # single-quoted Correct Label ~10x slower than JSON (issue 14). Quote-swapped JSON now
    # reads it; what JSON refuses still goes to `ast` (the other tests here).
    def refuse(text: str) -> object:
        raise AssertionError("ast.literal_eval was used")

    monkeypatch.setattr(polygons.ast, "literal_eval", refuse)
    cell = "[[{'x': 0.25, 'y': 0.5}, {'x': 0.75, 'y': 0.5}, {'x': 0.5, 'y': 1.0}]]"
    assert polygons.parse_polygons(cell) == (((0.25, 0.5), (0.75, 0.5), (0.5, 1.0)),)
    assert polygons.parse_polygons(" " + cell) == polygons.parse_polygons(cell)  # cached result
