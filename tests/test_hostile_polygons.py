"""Hostile polygon cells: whatever a segmentation CSV holds, the build goes on (issue #12 D1)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from data_build import polygons
from data_build.drop import DETECTION_REQUIRED, discover

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("text", [DEEP, "[" * 100_000, "{" * 50_000 + "}" * 50_000,
                                  "[" * 5_000 + "{'x': 1}" + "]" * 5_000])
def test_deeply_nested_cell_is_a_polygon_error(text: str) -> None:
    with pytest.raises(polygons.PolygonError):
        polygons.parse_polygons(text)


def test_deeply_nested_cell_skips_one_slice_and_the_build_goes_on(synth_drop: Path) -> None:
    before = discover(synth_drop)
    victim = next(c.id for c in before.cases if c.folder_type != "normal")
    header = ["Case ID", *DETECTION_REQUIRED, "Labeling State"]
    with open(synth_drop / "segmentation" / "Results_Deep Detection.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerow(["1", f"{victim}.jpg", "[]", DEEP, "1", "3", "Gold Standard"])
    after = discover(synth_drop)
    assert [s.id for s in after.skips if s.reason == "malformed-polygon"] == [victim]
    assert len(after.cases) == len(before.cases)
    assert next(c for c in after.cases if c.id == victim).polygons is None
