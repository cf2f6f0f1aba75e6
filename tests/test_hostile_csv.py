"""Hostile free text in a segmentation CSV (issue #12 D5): a Latin-1 byte or an unterminated
quote in a ``Comments`` cell loses at most the affected row(s), counted, never the whole file."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from data_build.drop import discover

HEADER = ["Case ID", "Origin", "Labeling State", "Majority Label", "Correct Label", "Agreement",
          "Total Qualified Reads", "Comments"]


def _square(x0: float) -> str:
    points = [(x0, 0.25), (x0 + 0.25, 0.25), (x0 + 0.25, 0.5), (x0, 0.5)]
    return json.dumps([{"x": x, "y": y} for x, y in points])


def _bleeding_ids(root: Path) -> list[str]:
    """Slices that will have a mask only from the hostile file (the drop's own CSVs removed)."""
    shutil.rmtree(root / "segmentation")
    (root / "segmentation").mkdir()
    ids = [c.id for c in discover(root).cases if c.folder_type != "normal"]
    assert ids and not any(c.polygons for c in discover(root).cases if c.id in ids)
    return ids


def _write_detection(root: Path, ids: list[str], comments: dict[int, str], encoding: str = "utf-8") -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    lines = [buffer.getvalue()]
    for index, slice_id in enumerate(ids):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(
            [str(index), f"{slice_id}.jpg", "Gold Standard", _square(0.1), "[]", "1", "3", "fine"])
        line = buffer.getvalue()
        if index in comments:  # hand-made damage the csv module would have quoted away
            line = line.replace("fine", comments[index])
        lines.append(line)
    path = root / "segmentation" / "Results_Hostile Detection.csv"
    path.write_bytes("".join(lines).encode(encoding, errors="strict") if encoding != "raw"
                     else "".join(lines).encode("latin-1"))
    return path


def test_latin1_byte_in_a_comment_keeps_every_row(synth_drop: Path) -> None:
    ids = _bleeding_ids(synth_drop)
    _write_detection(synth_drop, ids, {0: "caf\xe9 au lait"}, encoding="raw")  # one 0xE9 byte
    found = discover(synth_drop)
    masks = {c.id: c.polygons for c in found.cases}
    assert all(masks[i] for i in ids)  # no mask lost, the Latin-1 row included
    assert not [s for s in found.skips if s.reason == "bad-segmentation-csv"]
    assert any("Hostile" in w and "not UTF-8" in w for w in found.warnings)


def test_unterminated_quote_in_a_comment_loses_only_that_row(synth_drop: Path) -> None:
    ids = _bleeding_ids(synth_drop)
    assert len(ids) >= 3
    _write_detection(synth_drop, ids, {1: '"never closed, then more text'})
    found = discover(synth_drop)
    masks = {c.id: c.polygons for c in found.cases}
    kept = [i for i in ids if i != ids[1]]
    assert all(masks[i] for i in kept)
    assert found.stats["segmentation_rows_unparseable"] == 1
    assert any("Hostile" in w and "1 row" in w for w in found.warnings)
    assert not [s for s in found.skips if s.reason == "bad-segmentation-csv"]
