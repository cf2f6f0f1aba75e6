"""``fusion-train --cache DIR`` (`fusion.decoded_cache`): equal batches, keys, space, atomicity.

Shards are built by the product's builder (`records.build`) from synthetic drops
(`write_synthetic_drop`); the caches by `fusion.decoded_cache` itself.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data_build import records
from data_build.synth.writer import write_synthetic_drop
from fusion import decoded_cache, reader
from fusion.cli.train import main
from fusion.config import preset

REPO = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "width": 4, "depth": 2, "fusion_width": 4, "groups": 2}


def _build(work: Path, name: str, seed: int, source: str = "render", patients: int = 6) -> Path:
    write_synthetic_drop(work / f"drop-{name}", n_patients=patients, slices_per_patient=3, size=64, seed=seed)
    records.build(work / f"drop-{name}", work / name, source=source, workers=1, shard_size=3,
                  fractions=(0.5, 0.5, 0.0), progress=False)
    return work / name


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Render shards with train and val, masks in both."""
    return _build(tmp_path_factory.mktemp("cache"), "shards", seed=0)


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another render shard set (another seed): the same split names and sizes, other records."""
    return _build(tmp_path_factory.mktemp("cache-other"), "shards", seed=1, patients=5)


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        if key == "id":
            assert a[key].tolist() == b[key].tolist()
            continue
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _epochs_equal(shards_dir: Path, cache: decoded_cache.DecodedSplit, split: str, size: int, **kwargs: object) -> None:
    """Two epochs of the split read from the shards and from the cache: equal bit for bit."""
    plain = reader.ShardSequence(shards_dir, split, image_size=size, batch_size=4, as_dicts=True, **kwargs)
    cached = reader.ShardSequence(shards_dir, split, image_size=size, batch_size=4, as_dicts=True, cache=cache,
                                  **kwargs)
    for _ in range(2):
        for i in range(len(plain)):
            _same(plain.batch(i), cached.batch(i))
        plain.on_epoch_end()
        cached.on_epoch_end()


# 32 px: DCT scale 2 straight to S; 24 px: decoded then resized as grey (table 1).
@pytest.mark.parametrize("size", [32, 24])
def test_cached_batches_equal_uncached_bit_for_bit(shards: Path, tmp_path: Path, size: int) -> None:
    caches = decoded_cache.open_caches(tmp_path / "cache", shards, ("train", "val"), size)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"train-{size}px", f"val-{size}px"]
    augment = preset("demo").augment
    assert augment.enabled  # augmentation applies per epoch on top of the cached, un-augmented data
    _epochs_equal(shards, caches["train"], "train", size, shuffle=True, seed=5, augment=augment)
    _epochs_equal(shards, caches["val"], "val", size)
    # What model.fit gets: (image, packed targets).
    plain = reader.ShardSequence(shards, "train", image_size=size, batch_size=4)[0]
    cached = reader.ShardSequence(shards, "train", image_size=size, batch_size=4, cache=caches["train"])[0]
    np.testing.assert_array_equal(plain[0], cached[0])
    for key in plain[1]:
        np.testing.assert_array_equal(plain[1][key], cached[1][key], err_msg=key)
    assert caches["train"].read_batch(np.arange(len(caches["train"])))["mask"].any()  # masks exercised


def test_a_cache_of_another_size_or_split_is_refused_by_the_dataset(shards: Path, tmp_path: Path) -> None:
    caches = decoded_cache.open_caches(tmp_path, shards, ("train",), 16)
    with pytest.raises(ValueError, match="the decoded cache holds"):
        reader.ShardSequence(shards, "train", image_size=32, cache=caches["train"])
    with pytest.raises(ValueError, match="the decoded cache holds"):
        reader.ShardSequence(shards, "val", image_size=16, cache=caches["train"])


def test_reused_when_current_rebuilt_when_stale(shards: Path, other_shards: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fusion.decoded_cache")
    first = decoded_cache.open_caches(tmp_path, shards, ("train",), 16)["train"]
    inode = (tmp_path / "train-16px" / "codes.npy").stat().st_ino
    assert "building it now (there is none)" in caplog.text
    caplog.clear()
    again = decoded_cache.open_caches(tmp_path, shards, ("train",), 16)["train"]
    assert "reusing it" in caplog.text and "building" not in caplog.text
    assert (tmp_path / "train-16px" / "codes.npy").stat().st_ino == inode  # not rewritten
    _same(first.read_batch([0, 1]), again.read_batch([0, 1]))

    caplog.clear()  # other shards into the same folder: the key differs, the cache is rebuilt
    other = decoded_cache.open_caches(tmp_path, other_shards, ("train",), 16)["train"]
    assert "it was made from other data (" in caplog.text and "shards differ)" in caplog.text
    _epochs_equal(other_shards, other, "train", 16)

    caplog.clear()  # a new reader version: every old cache is stale
    monkeypatch.setattr(decoded_cache, "READER_VERSION", reader.READER_VERSION + 1)
    decoded_cache.open_caches(tmp_path, other_shards, ("train",), 16)
    assert "(reader_version differ)" in caplog.text
    meta = json.loads((tmp_path / "train-16px" / "cache.json").read_text())
    assert meta["complete"] and meta["identity"]["reader_version"] == reader.READER_VERSION + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-16px"]  # no partial, no old copy


def test_a_cache_rebuilt_for_other_shards_under_an_open_one_is_refused(shards: Path, other_shards: Path,
                                                                         tmp_path: Path) -> None:
    # Two runs sharing one DIR: the second rebuilds the folder for its shards before the
    # first's (spawned) readers map it; they must not read the other run's slices.
    import pickle

    mine = decoded_cache.open_caches(tmp_path, shards, ("train",), 16)["train"]
    in_worker = pickle.loads(pickle.dumps(mine))  # what a spawned worker gets: the folder only
    decoded_cache.open_caches(tmp_path, other_shards, ("train",), 16)
    with pytest.raises(decoded_cache.CacheError, match="changed under this run: it was made from other data"):
        in_worker.read_batch([0])


def test_a_folder_in_the_way_is_not_removed(shards: Path, tmp_path: Path) -> None:
    (tmp_path / "train-16px").mkdir()
    (tmp_path / "train-16px" / "notes.txt").write_text("mine")
    with pytest.raises(decoded_cache.CacheError, match="holds other files .*notes.txt"):
        decoded_cache.open_caches(tmp_path, shards, ("train",), 16)
    assert (tmp_path / "train-16px" / "notes.txt").read_text() == "mine"


Usage = namedtuple("Usage", "total used free")


def test_not_enough_disk_is_refused_before_building(shards: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    specs = decoded_cache.plan_caches(tmp_path / "c", shards, ("train", "val"), 32, announce=False)
    needed = sum(p.spec.nbytes for p in specs)
    assert needed == sum(p.spec.count for p in specs) * (32 * 32 * 5 + 100) + 2 * 4096
    monkeypatch.setattr(decoded_cache.shutil, "disk_usage",
                        lambda path: Usage(10**9, 10**9, needed + decoded_cache.HEADROOM - 1))
    with pytest.raises(decoded_cache.CacheError, match=r"needs .* but its disk has .* free; free some space"):
        decoded_cache.open_caches(tmp_path / "c", shards, ("train", "val"), 32)
    assert list((tmp_path / "c").iterdir()) == []  # nothing started
    # fusion-train: one line, exit 1, before the run folder exists.
    result = CliRunner().invoke(main, [str(shards), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c"),
                                       "--image-size", "32", "--backend", "tensorflow"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: --cache {tmp_path / 'c'}: the decoded cache needs")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(decoded_cache.shutil, "disk_usage",
                        lambda path: Usage(10**9, 10**9, needed + decoded_cache.HEADROOM))
    decoded_cache.open_caches(tmp_path / "c", shards, ("train", "val"), 32)  # just enough


def test_dicom_shards_are_refused(tmp_path: Path) -> None:
    dicom = _build(tmp_path, "dicom", seed=0, source="dicom", patients=2)
    with pytest.raises(decoded_cache.CacheError, match="holds dicom records; train without --cache"):
        decoded_cache.open_caches(tmp_path / "c", dicom, ("train",), 16)


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from fusion import decoded_cache

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs, as under kill -9 or the OOM killer

    if sys.argv[3] == "rename":
        decoded_cache.os.rename = die  # everything written, cache.json included; not yet in place
    else:
        decoded_cache.atomic_write_text = die  # arrays written, the completion mark not
    decoded_cache.open_caches(sys.argv[2], sys.argv[1], ("train",), 16)
    """
)


@pytest.mark.parametrize("point", ["mark", "rename"])
def test_killed_build_leaves_no_cache_that_looks_complete(shards: Path, tmp_path: Path, point: str) -> None:
    env = {**os.environ, "KERAS_BACKEND": "numpy", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED, str(shards), str(tmp_path), point], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".train-16px.partial-"), left  # only the partial
    assert not (tmp_path / "train-16px").exists()
    cache = decoded_cache.open_caches(tmp_path, shards, ("train",), 16)["train"]  # rebuilt, partial removed
    assert [p.name for p in tmp_path.iterdir()] == ["train-16px"]
    _epochs_equal(shards, cache, "train", 16)


def test_interrupted_build_removes_its_partial(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def interrupted(*args: object, **kwargs: object) -> dict:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return reader.decode_record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decoded_cache, "decode_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        decoded_cache.open_caches(tmp_path, shards, ("train",), 16)
    assert list(tmp_path.iterdir()) == []


def test_a_cache_finished_by_another_run_meanwhile_is_used(shards: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Two runs on the same shards start building the same cache; the other one renames its copy
    # into place first. Ours then finds a complete cache with its key where it meant to rename.
    write_arrays = decoded_cache._write_arrays
    other: list[decoded_cache.DecodedSplit] = []
    started: list[bool] = []

    def racing(*args: object) -> None:
        if not started:  # the first build (ours) lets the other run's build finish first
            started.append(True)
            other.append(decoded_cache.open_caches(tmp_path / "elsewhere", shards, ("train",), 16)["train"])
            shutil.copytree(tmp_path / "elsewhere" / "train-16px", tmp_path / "c" / "train-16px")
        write_arrays(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(decoded_cache, "_write_arrays", racing)
    cache = decoded_cache.open_caches(tmp_path / "c", shards, ("train",), 16)["train"]
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["train-16px"]  # our partial removed
    _same(cache.read_batch(np.arange(len(cache))), other[0].read_batch(np.arange(len(cache))))


def test_disk_error_during_the_build_is_a_cache_error(shards: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(decoded_cache, "_write_arrays", full)
    with pytest.raises(decoded_cache.CacheError, match=r"building train-16px failed \(No space left on device\)"):
        decoded_cache.open_caches(tmp_path, shards, ("train",), 16)
    assert list(tmp_path.iterdir()) == []  # the partial removed


def test_unwritable_cache_folder_is_one_line(shards: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(decoded_cache.CacheError, match="cannot write there .*pick a writable folder"):
        decoded_cache.open_caches(blocker / "cache", shards, ("train",), 16)


# Resume on JAX reusing the cache: tests/test_train_backends.py
# (test_jax_resume_continues_from_backup_and_reuses_the_cache, one JAX subprocess for both).


def test_tensorflow_backend_trains_from_the_cache(shards: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    preset("demo").replace(model=TINY, train={"epochs": 1, "batch_size": 4, "patience": 0}).save(config)
    result = CliRunner().invoke(main, [str(shards), "--out", str(tmp_path / "run"), "--config", str(config),
                                       "--cache", str(tmp_path / "c"), "--backend", "tensorflow", "--no-export",
                                       "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["train-32px", "val-32px"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and "dice" in metrics["summary"]
    shutil.rmtree(tmp_path / "run")
