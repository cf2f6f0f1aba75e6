"""records: the local engine's pool (issue 14). Workers write whole shards; the main process
handles no record bytes, and the shards equal the record-by-record composition for any worker
count."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import FakeDrop, render_case

from data_build import convert, records, splits, tfrecord


def _write(drop: FakeDrop, out: Path, **kwargs: object) -> records.BuildReport:
    options = {"workers": 1, "shard_size": 3, "progress": False, **kwargs}
    return records.write_drop(drop, out, **options)  # type: ignore[arg-type]


def _expected_shards(drop: FakeDrop, shard_size: int) -> dict[str, bytes]:
    """Each planned shard as framed records of `make_example`, in plan order: what the build
    wrote record by record before issue 14 (and what TensorFlow's writer writes)."""
    plans = records.plan_shards(drop.cases, shard_size, splits.DEFAULT_FRACTIONS, splits.DEFAULT_SALT)
    options = convert.ConvertOptions(source=drop.source)
    out = {}
    for plan in plans:
        results = [convert.make_example(case, options) for case in plan.cases]
        out[plan.file] = b"".join(tfrecord.frame(r.serialized) for r in results
                                  if isinstance(r, convert.Converted))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_are_the_framed_records_in_plan_order(
    render_drop: FakeDrop, tmp_path: Path, workers: int
) -> None:
    out = tmp_path / "out"
    _write(render_drop, out, workers=workers)
    written = {p.name: p.read_bytes() for p in out.glob("*.tfrecord")}
    assert written == _expected_shards(render_drop, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:  # sha256 and size as computed while writing
        assert shard["sha256"] == hashlib.sha256(written[shard["file"]]).hexdigest()
        assert shard["bytes"] == len(written[shard["file"]])


def test_main_process_handles_no_records_with_workers(
    render_drop: FakeDrop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fed record by record, the main process converted nothing but received, framed, wrote and
    # re-read every record: ~1 ms CPU a slice, which capped the build near 1,000 slices/s for
    # any worker count. Spawned workers import their own modules, so breaking the record
    # path here breaks only the main process.
    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the main process touched a record")

    monkeypatch.setattr(tfrecord, "frame", refuse)
    monkeypatch.setattr(records, "_sha256_file", refuse)
    report = _write(render_drop, tmp_path / "pool", workers=2)
    assert report.examples == 12 and report.shards_written > 2
    monkeypatch.undo()
    written = {p.name: p.read_bytes() for p in (tmp_path / "pool").glob("*.tfrecord")}
    assert written == _expected_shards(render_drop, 3)


def test_strict_stop_in_workers_is_the_serial_one(render_drop: FakeDrop, tmp_path: Path) -> None:
    # Two bad slices in different shards: whichever worker finds its own first, the build
    # reports the first in plan order, as a serial build does, and leaves no temporaries.
    bad = [render_case(render_drop.root, f"ID_{i:09x}", size=32, patient_id=f"P{i // 2}")
           for i in (3, 9)]
    for case in bad:
        Path(case.render_paths["brain_window"]).write_bytes(b"")
    ids = {c.id for c in bad}
    drop = replace(render_drop, cases=[c for c in render_drop.cases if c.id not in ids] + bad)
    stops = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        with pytest.raises(records.StrictStop) as stop:
            _write(drop, out, strict=True, workers=workers)
        stops.append(stop.value.skip)
        assert not list(out.glob(".*.tmp")) and not (out / "manifest.json").exists()
        # A shard another worker finished after the stopping one is not left unlisted on disk.
        logged = set(records._read_progress(out)[1])
        assert {p.name for p in out.glob("*.tfrecord")} <= logged
    assert stops[0] == stops[1] and stops[0].reason == "corrupt-image"
    # Fixed, the stopped pool build resumes: its logged shards are kept, the rest rewritten.
    for case in bad:
        Path(case.render_paths["brain_window"]).write_bytes(
            Path(render_drop.cases[1].render_paths["brain_window"]).read_bytes())
    clean = _write(drop, tmp_path / "clean", workers=1)
    resumed = _write(drop, tmp_path / "out2", workers=2, resume=True)
    assert resumed.shards_written + resumed.shards_reused == clean.shards_written
    assert ({p.name: p.read_bytes() for p in (tmp_path / "out2").glob("*.tfrecord")}
            == {p.name: p.read_bytes() for p in (tmp_path / "clean").glob("*.tfrecord")})
