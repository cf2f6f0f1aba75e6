"""fusion.outputs: fusion-predict's own output folders are recognised and never walked as input."""
from __future__ import annotations

from pathlib import Path

import pytest
from factories import deny_listing

from fusion.outputs import MARKER, is_fusion_output, walk_inputs, write_marker


def test_is_fusion_output(tmp_path: Path) -> None:
    assert not is_fusion_output(tmp_path)
    (tmp_path / "predictions.csv").write_text("id\n")
    assert not is_fusion_output(tmp_path)  # a user's own predictions.csv alone is not ours
    (tmp_path / "series.csv").write_text("series_id\n")
    assert is_fusion_output(tmp_path)  # a run before the marker existed
    other = tmp_path / "other"
    other.mkdir()
    write_marker(other, {"mask_formats": ["png"]})
    assert (other / MARKER).is_file() and is_fusion_output(other)


def test_walk_skips_outputs_hidden_and_excluded_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").write_bytes(b"")
    (tmp_path / "z.dcm").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.dcm").write_bytes(b"")
    old = tmp_path / "old-run"
    (old / "masks").mkdir(parents=True)
    (old / "masks" / "m.png").write_bytes(b"")
    write_marker(old, {})
    mine = tmp_path / "this-run"
    (mine / "masks").mkdir(parents=True)
    (mine / "masks" / "n.png").write_bytes(b"")
    skipped: list[Path] = []
    files = list(walk_inputs(tmp_path, exclude=[mine], on_skip=skipped.append))
    assert files == [(tmp_path / "a" / "x.dcm", False), (tmp_path / "z.dcm", False)]
    assert skipped == [old]  # the run's own --out is left out without a report
    given = list(walk_inputs(old, on_skip=skipped.append))  # an old output given directly
    assert given == [] and skipped == [old, old]
    assert list(walk_inputs(tmp_path / "z.dcm")) == [(tmp_path / "z.dcm", True)]


def test_walk_reports_unlistable_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads every folder, so an unreadable one is simulated at os.scandir."""
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "x.dcm").write_bytes(b"")
    (tmp_path / "ok.dcm").write_bytes(b"")
    deny_listing(monkeypatch, "locked")
    errors: list[OSError] = []
    files = list(walk_inputs(tmp_path, on_error=errors.append))
    assert files == [(tmp_path / "ok.dcm", False)]
    assert [(e.filename, e.strerror) for e in errors] == [(str(tmp_path / "locked"),
                                                           "Permission denied")]
