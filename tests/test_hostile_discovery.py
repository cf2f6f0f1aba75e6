"""Hostile drop layouts: symlink loops, unreadable files and folders, odd flagged.txt, misnamed
renders/, --strict with flagged slices (issue #12 D2, D6, D7, D13).

Tests run as root, where chmod 000 does not block reads, so PermissionError is simulated.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import write_tiny_synth_drop

from data_build import drop as drop_module
from data_build import records
from data_build.cases import DropError
from data_build.drop import discover


def _flagged(root: Path) -> str:
    return (root / "flagged.txt").read_text().split()[0].removesuffix(".jpg")


def _a_window_folder(root: Path) -> Path:
    return next(p for p in sorted((root / "renders").glob("*/brain_window")))


def test_self_referencing_render_symlink_is_ignored_with_a_warning(synth_drop: Path) -> None:
    before = discover(synth_drop)
    link = _a_window_folder(synth_drop) / "self.jpg"
    os.symlink("self.jpg", link)
    after = discover(synth_drop)
    assert [c.id for c in after.cases] == [c.id for c in before.cases]
    assert any(str(link) in w for w in after.warnings)


def test_looping_segmentation_csv_is_skipped_with_its_path(synth_drop: Path) -> None:
    link = synth_drop / "segmentation" / "loop.csv"
    os.symlink("loop.csv", link)
    found = discover(synth_drop)
    assert any(s.reason == "bad-segmentation-csv" and s.path == str(link) for s in found.skips)
    assert found.cases


def test_unreadable_segmentation_csv_is_skipped(synth_drop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = discover(synth_drop)
    victim = sorted((synth_drop / "segmentation").glob("*Subdural*"))[0]
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == victim:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    after = discover(synth_drop)
    assert any(s.reason == "bad-segmentation-csv" and s.path == str(victim) for s in after.skips)
    assert len(after.cases) == len(before.cases)


def test_unreadable_window_folder_skips_its_slices(synth_drop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _a_window_folder(synth_drop)
    ids = {p.stem for p in folder.glob("*.jpg")}
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if str(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(drop_module.os, "scandir", scandir)
    found = discover(synth_drop)
    assert any(str(folder) in w for w in found.warnings)
    missing = {s.id for s in found.skips if s.reason == "missing-window"}
    flagged = {s.id for s in found.skips if s.reason == "flagged"}
    assert missing == ids - flagged and missing and found.cases


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_flagged_txt_in_utf16_is_read(synth_drop: Path, encoding: str) -> None:
    flagged = _flagged(synth_drop)
    (synth_drop / "flagged.txt").write_bytes(f"{flagged}.jpg\r\n".encode(encoding))
    found = discover(synth_drop)
    assert [s.id for s in found.skips if s.reason == "flagged"] == [flagged]


@pytest.mark.parametrize("kind", ["folder", "loop", "unreadable"])
def test_unusable_flagged_txt_is_warned(synth_drop: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = synth_drop / "flagged.txt"
    if kind == "folder":
        path.unlink()
        path.mkdir()
    elif kind == "loop":
        path.unlink()
        os.symlink("flagged.txt", path)
    else:
        def read_bytes(self: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
        monkeypatch.setattr(drop_module, "_read_segmentation", lambda root, report: {})
    found = discover(synth_drop)
    assert any("flagged.txt" in w and "NOT" in w for w in found.warnings)


def test_strict_builds_a_drop_with_flagged_slices(synth_drop: Path, tmp_path: Path) -> None:
    found = discover(synth_drop, strict=True)  # a flagged slice is an intended exclusion
    assert [s.reason for s in found.skips] == ["flagged"]
    report = records.build(synth_drop, tmp_path / "out", workers=1, strict=True, progress=False)
    assert report.examples == len(found.cases)
    assert report.skips_by_reason == {"flagged": 1}


@pytest.mark.parametrize("kind", ["Renders", "render", "renders 2020", "file", "loop"])
def test_auto_source_refuses_a_misnamed_renders_folder(tmp_path: Path, kind: str) -> None:
    root = write_tiny_synth_drop(tmp_path / "drop", dicoms=True)
    renders = root / "renders"
    if kind in ("Renders", "render", "renders 2020"):
        renders.rename(root / kind)
    elif kind == "file":
        renders.rename(root / "renders.old")
        renders.write_text("oops")
    else:
        renders.rename(root / "renders.old")
        os.symlink("renders", renders)
    with pytest.raises(DropError, match="renders") as caught:
        discover(root, source="auto")
    assert "--source dicom" in str(caught.value)
    assert discover(root, source="dicom").source == "dicom"  # an explicit choice still works
