"""Hostile output folders and interrupted writes (issue #12 D10, D11, D15, file modes, build
warnings): only the build's own files are ever deleted, a torn progress line costs nothing,
bad --out / full disk / odd manifests / corrupt shards give one line, not a traceback, and
outputs get the modes an ordinary write under the user's umask gives."""
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner
from conftest import FakeDrop

from data_build import cli, files, records


def _write(drop: FakeDrop, out: Path, **kwargs: object) -> records.BuildReport:
    options = {"workers": 1, "shard_size": 3, "progress": False, **kwargs}
    return records.write_drop(drop, out, **options)  # type: ignore[arg-type]


def _one_line_error(result: object, code: int = 1) -> str:
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert not isinstance(result.exception, Exception) or isinstance(  # type: ignore[attr-defined]
        result.exception, SystemExit)  # type: ignore[attr-defined]
    lines = [line for line in result.output.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.output  # type: ignore[attr-defined]
    return lines[0]


# --- D11: --overwrite deletes only what the build's manifest or progress log lists -----------


def test_overwrite_keeps_unrelated_tfrecords(render_drop: FakeDrop, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.tfrecord").write_bytes(b"user data")
    _write(render_drop, out)
    _write(replace(render_drop, cases=render_drop.cases[:6]), out, overwrite=True, shard_size=6)
    assert (out / "mine.tfrecord").read_bytes() == b"user data"
    listed = {s["file"] for s in json.loads((out / "manifest.json").read_text())["shards"]}
    assert {p.name for p in out.glob("*.tfrecord")} == listed | {"mine.tfrecord"}


def test_a_manifest_fusion_did_not_write_is_never_replaced(render_drop: FakeDrop, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"my": "own manifest"}')
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(records.BuildError, match="manifest.json"):
            _write(render_drop, out, **flags)
    assert (out / "manifest.json").read_text() == '{"my": "own manifest"}'


def test_a_foreign_file_with_a_shard_name_is_not_replaced(render_drop: FakeDrop, tmp_path: Path) -> None:
    out = tmp_path / "first"
    report = _write(render_drop, out)
    name = json.loads(report.manifest_path.read_text())["shards"][0]["file"]
    other = tmp_path / "other"
    other.mkdir()
    (other / name).write_bytes(b"not ours")
    with pytest.raises(records.BuildError, match=name):
        _write(render_drop, other, overwrite=True)
    assert (other / name).read_bytes() == b"not ours"


# --- D15: a torn last progress line ------------------------------------------------------------


def test_torn_progress_line_costs_no_shard_on_the_next_resume(render_drop: FakeDrop, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _write(render_drop, out)
    (out / "manifest.json").unlink()  # as if killed while writing the last progress line
    progress = out / records.PROGRESS
    text = progress.read_text()
    progress.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + text.rstrip("\n").rsplit("\n", 1)[1][:30])
    first = _write(render_drop, out, resume=True)
    assert first.shards_written == 1  # the shard whose line was torn
    (out / "manifest.json").unlink()
    second = _write(render_drop, out, resume=True)
    assert second.shards_written == 0


# --- D10: one-line errors ----------------------------------------------------------------------


def test_out_below_a_file_is_a_one_line_error(synth_drop: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(cli.build, [str(synth_drop), "--out", str(tmp_path / "a-file" / "out"),
                                            "--workers", "1", "--no-progress"])
    assert "--out" in _one_line_error(result)


def test_unwritable_out_is_a_one_line_error(synth_drop: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.name == "out":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = CliRunner().invoke(cli.build, [str(synth_drop), "--out", str(tmp_path / "out"),
                                            "--workers", "1", "--no-progress"])
    line = _one_line_error(result)
    assert "Permission denied" in line and "--out" in line


def test_full_disk_during_a_build_is_a_one_line_error(synth_drop: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def full(out: Path, entry: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "_append_progress", full)
    result = CliRunner().invoke(cli.build, [str(synth_drop), "--out", str(tmp_path / "out"),
                                            "--workers", "1", "--no-progress"])
    line = _one_line_error(result)
    assert "No space left" in line and "--resume" in line


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "{}", "missing-key"])
def test_verify_on_an_odd_manifest_is_a_one_line_error(render_drop: FakeDrop, tmp_path: Path,
                                                       content: str) -> None:
    out = tmp_path / "out"
    _write(render_drop, out)
    if content == "missing-key":
        manifest = json.loads((out / "manifest.json").read_text())
        del manifest["shards"][0]["examples"]
        content = json.dumps(manifest)
    (out / "manifest.json").write_text(content)
    result = CliRunner().invoke(cli.verify, [str(out), "--no-progress"])
    assert "manifest" in _one_line_error(result)


def test_corrupt_shard_during_training_names_shard_offset_and_verify(
    render_drop: FakeDrop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion import data
    from fusion.cli import train as train_cli

    out = tmp_path / "shards"
    _write(render_drop, out, shard_size=12, fractions=(1.0, 0.0, 0.0))
    shard = out / json.loads((out / "manifest.json").read_text())["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))

    def read_everything(shards: Path, *args: object, **kwargs: object) -> Iterator[object]:
        for _ in data.make_dataset(shards, "train", image_size=32, batch_size=4):
            pass  # the real reader meets the corrupt record, as fit() would
        raise AssertionError("the corrupt record was not met")

    monkeypatch.setattr("fusion.train.check_inputs", lambda shards, cfg: None)
    monkeypatch.setattr("fusion.train.train", read_everything)
    result = CliRunner().invoke(train_cli.main, [str(out), "--out", str(tmp_path / "run")])
    line = _one_line_error(result)
    assert shard.name in line and "byte" in line and "fusion-verify" in line


# --- file modes ---------------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "metrics.json"
    files.atomic_write_text(path, "{}")
    assert _mode(path) == 0o666 & ~umask


def test_build_outputs_follow_the_umask(render_drop: FakeDrop, tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out"
    report = _write(render_drop, out)
    for path in [report.manifest_path, out / records.PROGRESS, *out.glob("*.tfrecord")]:
        assert _mode(path) == 0o666 & ~umask, path


def test_temporary_folders_follow_the_umask(tmp_path: Path, umask: int) -> None:
    folder = files.make_temp_dir(tmp_path, ".export.")
    assert _mode(folder) == 0o777 & ~umask


def test_saved_keras_model_follows_the_umask(tmp_path: Path, umask: int) -> None:
    import keras

    from fusion.export import save_keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    save_keras(model, tmp_path / "model.keras")
    assert _mode(tmp_path / "model.keras") == 0o666 & ~umask


# --- warnings in the summary and the manifest -------------------------------------------------


def test_empty_splits_and_small_renders_are_warned(render_drop: FakeDrop, tmp_path: Path) -> None:
    report = _write(render_drop, tmp_path / "out", fractions=(1.0, 0.0, 0.0))
    manifest = json.loads(report.manifest_path.read_text())
    for words in ("'val' is empty", "'test' is empty", "32x32", "128"):
        assert any(words in w for w in manifest["warnings"]), words
        assert any(words in w for w in report.warnings), words


def test_non_square_renders_are_warned(tmp_path: Path) -> None:
    from conftest import render_case

    root = tmp_path / "drop"
    cases = [render_case(root, f"ID_{i:09x}", size=160, patient_id=f"P{i}") for i in range(3)]
    import cv2
    import numpy as np

    for case in cases[:1]:
        for path in case.render_paths.values():
            cv2.imwrite(path, np.full((160, 200, 3), 90, np.uint8))
    report = _write(FakeDrop(root=root, source="render", cases=cases), tmp_path / "out")
    assert any("160x200" in w and "not square" in w for w in report.warnings)
    assert not any("160x160" in w for w in report.warnings)


def test_summary_prints_the_warnings(render_drop: FakeDrop, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    report = _write(render_drop, tmp_path / "out", fractions=(1.0, 0.0, 0.0))
    cli._summarise_build(report)
    assert "'val' is empty" in capsys.readouterr().out


def test_shard_write_error_is_a_build_error(render_drop: FakeDrop, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(record: bytes) -> bytes:  # the shard write is where the disk runs out
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.tfrecord, "frame", full_disk)
    with pytest.raises(records.BuildError, match="No space left.*--resume"):
        _write(render_drop, tmp_path / "out")


def test_train_out_below_a_file_is_a_one_line_error(render_drop: FakeDrop, tmp_path: Path) -> None:
    from fusion.cli import train as train_cli

    out = tmp_path / "shards"
    _write(render_drop, out, shard_size=12, fractions=(0.5, 0.5, 0.0))
    (tmp_path / "a-file").write_text("x")
    result = CliRunner().invoke(train_cli.main, [str(out), "--out", str(tmp_path / "a-file" / "run"),
                                                 "--image-size", "32", "--epochs", "1"])
    assert "--out" in _one_line_error(result)


def test_tf_free_tfrecord_writer_follows_the_umask(tmp_path: Path, umask: int) -> None:
    from data_build.tfrecord import TFRecordWriter

    with TFRecordWriter(tmp_path / "train-00000-of-00001.tfrecord") as writer:
        writer.write(b"record")
    assert _mode(tmp_path / "train-00000-of-00001.tfrecord") == 0o666 & ~umask


def test_overwrite_removes_a_beam_builds_staging_but_not_a_folder_of_the_users(
    render_drop: FakeDrop, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _write(render_drop, out)
    staging = out / records.BEAM_STAGING
    (staging / "spill").mkdir(parents=True)
    (staging / "skipped-0.jsonl").write_text('{"id": "old build"}\n')  # what a Beam build keeps
    (staging / "spill" / "a.bin").write_bytes(b"killed run")
    _write(render_drop, out, overwrite=True)
    assert not staging.exists()  # its skips described the build that was replaced
    staging.mkdir()
    (staging / "notes.txt").write_text("mine")
    _write(render_drop, out, overwrite=True)
    assert (staging / "notes.txt").read_text() == "mine"
