"""`fusion-train --backend`: a JAX run that never imports TensorFlow, resume on JAX, refusals.

Shards are built by the product's builder (`records.build`) from a synthetic drop. Runs on JAX
go to a fresh subprocess (Keras reads KERAS_BACKEND once, and this process runs on
TensorFlow) with TensorFlow's import blocked, so any import of it fails the run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from data_build import records
from data_build.manifest import Manifest
from data_build.synth.writer import write_synthetic_drop
from data_build.windows import WINDOW_NAMES
from fusion import backend
from fusion.cli.train import main
from fusion.config import preset
from fusion.errors import TrainError

REPO = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "width": 4, "depth": 2, "fusion_width": 4, "groups": 2}
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="jax is not installed (pip install -e .[test])")

#: Runs its argv as ``fusion-train`` (or the SCRIPT env var's code) with TensorFlow blocked;
#: prints every blocked import attempt at exit.
BLOCKED = textwrap.dedent(
    """
    import atexit, importlib.abc, os, sys

    attempts = []

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                attempts.append(name)
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    atexit.register(lambda: print("TF_IMPORTS", len(attempts), attempts[:3]))
    if os.environ.get("SCRIPT"):
        exec(os.environ["SCRIPT"])
    else:
        from fusion.cli.train import main
        main(sys.argv[1:], prog_name="fusion-train")
    """
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Render shards of a synthetic drop: train and val both hold slices with a mask."""
    work = tmp_path_factory.mktemp("backends")
    write_synthetic_drop(work / "drop", n_patients=6, slices_per_patient=3, size=64, seed=0)
    records.build(work / "drop", work / "shards", source="render", workers=1, shard_size=3,
                  fractions=(0.5, 0.5, 0.0), progress=False)
    counts = Manifest.load(work / "shards").counts
    assert counts["train"].with_mask > 0 and counts["val"].with_mask > 0
    return work / "shards"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo preset (augmentation on) at 32 px, 2 epochs."""
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    preset("demo").replace(model=TINY, train={"epochs": 2, "batch_size": 4, "patience": 0}).save(path)
    return path


def run_blocked(*args: str, script: str = "", backend_env: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "SCRIPT": script}
    env.pop("KERAS_BACKEND", None)
    if backend_env:
        env["KERAS_BACKEND"] = backend_env
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=900)


def tf_imports(proc: subprocess.CompletedProcess) -> str:
    return [line for line in proc.stdout.splitlines() if line.startswith("TF_IMPORTS")][-1]


@needs_jax
def test_jax_run_trains_without_tensorflow(shards: Path, tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_blocked(str(shards), "--out", str(run), "--config", str(tiny_config), "--backend", "jax",
                       "--quiet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert tf_imports(proc).startswith("TF_IMPORTS 0 "), tf_imports(proc)
    for name in ("config.json", "best.keras", "model.keras", "thresholds.json", "metrics.json", "history.csv"):
        assert (run / name).is_file(), name
    assert not (run / "export").exists() and not (run / "logs").exists()  # no SavedModel, no TF events
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["epochs_run"] == 2
    assert metrics["n_slices"] == Manifest.load(shards).counts["val"].slices
    assert "dice" in metrics["summary"] and "macro_auc" in metrics["summary"]
    assert "backend jax, precision policy float32" in proc.stderr
    assert "TensorBoard events skipped on the jax backend" in proc.stderr
    presets = json.loads((run / "windows.json").read_text())["presets"]  # for HU inputs until exported
    assert presets == {n: [w.level, w.width] for n, w in zip(WINDOW_NAMES, Manifest.load(shards).presets)}
    note = (run / "EXPORT_LATER.txt").read_text()
    command = f"fusion-train {shards} --out {run} --export-only --export-tta flip"
    assert command in note and command in proc.stdout  # written and printed
    # The note's command, here on TensorFlow: the JAX-trained .keras exports as a SavedModel.
    result = CliRunner().invoke(main, [str(shards), "--out", str(run), "--export-only", "--backend", "tensorflow"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (run / "export" / "1" / "saved_model.pb").is_file() and not (run / "EXPORT_LATER.txt").exists()
    assert json.loads((run / "export" / "1" / "fusion_export.json").read_text())["tta"] == "flip"


@needs_jax
def test_jax_resume_continues_from_backup_and_reuses_the_cache(shards: Path, tiny_config: Path,
                                                                tmp_path: Path) -> None:
    """A killed JAX run resumes from RUN/backup, and the decoded cache (`--cache`) built by the
    first attempt is reused, not rebuilt (one test: each JAX subprocess costs about a minute)."""
    script = textwrap.dedent(
        f"""
        import csv, logging
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        from fusion.backend import select_backend
        select_backend("jax")
        import keras
        from fusion.config import RunConfig
        from fusion.train import train

        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise KeyboardInterrupt("simulated kill")

        run, shards, cache = {str(tmp_path / "run")!r}, {str(shards)!r}, {str(tmp_path / "c")!r}
        cfg = RunConfig.load({str(tiny_config)!r})
        try:
            train(shards, run, cfg, verbose=0, callbacks=[Kill()], cache_dir=cache)
        except KeyboardInterrupt:
            pass
        import os
        assert os.path.isdir(run + "/backup")
        print("MARK resume", file=sys.stderr, flush=True)
        result = train(shards, run, cfg, resume=True, verbose=0, cache_dir=cache)
        with open(run + "/history.csv") as handle:
            epochs = [int(r["epoch"]) for r in csv.DictReader(handle)]
        print("RESUMED", result.epochs_run, epochs, os.path.exists(run + "/backup"))
        """
    )
    proc = run_blocked(script=script)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "RESUMED 1 [0, 1] False" in proc.stdout  # one more epoch after the kill; backup removed
    assert tf_imports(proc).startswith("TF_IMPORTS 0 "), tf_imports(proc)
    first, resumed = proc.stderr.split("MARK resume")
    assert first.count("building it now (there is none)") == 2 and first.count("built") >= 2  # train, val
    assert resumed.count("reusing it") == 2 and "building" not in resumed
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["train-32px", "val-32px"]


@needs_jax
def test_mirrored_strategy_is_refused_off_tensorflow(shards: Path, tiny_config: Path, tmp_path: Path) -> None:
    proc = run_blocked(str(shards), "--out", str(tmp_path / "run"), "--config", str(tiny_config),
                       "--strategy", "mirrored", backend_env="jax")  # the backend from KERAS_BACKEND
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "--strategy mirrored is tf.distribute and needs --backend tensorflow" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


@needs_jax
def test_damaged_shard_on_jax_is_one_line(shards: Path, tiny_config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    shard = sorted(bad.glob("train-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a record's payload: its data CRC no longer matches
    shard.write_bytes(bytes(data))
    proc = run_blocked(str(bad), "--out", str(tmp_path / "run"), "--config", str(tiny_config),
                       "--backend", "jax", "--quiet")
    assert proc.returncode == 1, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert shard.name in error[0] and f"fusion-verify {bad}" in error[0] and "CRC32C" in error[0]


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed here")
@pytest.mark.parametrize("how", ["option", "environment"])
def test_missing_backend_package_is_one_line(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [str(tmp_path), "--out", str(tmp_path / "run")]
    if how == "option":
        args += ["--backend", "torch"]
    else:
        monkeypatch.setenv("KERAS_BACKEND", "torch")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "the torch backend needs the 'torch' package, which is not installed" in lines[0]
    assert "pip install torch" in lines[0]
    assert not (tmp_path / "run").exists()


def test_unknown_backend_in_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "theano")
    result = CliRunner().invoke(main, [str(tmp_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "unknown Keras backend 'theano'" in result.output


def test_export_only_needs_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # jax is only checked for being installed; the refusal comes before keras is touched.
    monkeypatch.setattr(backend.importlib.util, "find_spec", lambda name: object())
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # as in a fresh process (restored after the test)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")  # restored after the test
    result = CliRunner().invoke(main, [str(tmp_path), "--out", str(tmp_path), "--backend", "jax",
                                       "--export-only"])
    assert result.exit_code == 2 and "--export-only writes a TensorFlow SavedModel" in result.output


def test_keras_loaded_on_another_backend_is_refused() -> None:
    import keras

    other = "jax" if keras.backend.backend() != "jax" else "tensorflow"
    if importlib.util.find_spec(other) is None:
        pytest.skip(f"{other} is not installed")
    with pytest.raises(backend.BackendError, match="already loaded on the"):
        backend.select_backend(other)


def test_precision_and_strategy_per_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend.precision_for(None) == "float32"
    assert backend.precision_for((9, 0)) == "mixed_bfloat16"
    assert backend.precision_for((7, 5)) == "mixed_float16"
    monkeypatch.setattr(backend, "current_backend", lambda: "jax")
    assert isinstance(backend.make_strategy("default"), backend.DefaultStrategy)
    with pytest.raises(TrainError, match="needs --backend tensorflow"):
        backend.make_strategy("mirrored")
    with pytest.raises(TrainError, match="unknown strategy"):
        backend.make_strategy("tpu")
    assert backend.default_jit()  # JAX compiles its train step even on CPU


def test_masked_only_reads_only_slices_with_a_mask(shards: Path) -> None:
    from fusion.train_data import SubsetSequence, masked_indices

    seq = SubsetSequence(shards, "train", image_size=16, batch_size=2, shuffle=True, seed=3, as_dicts=True)
    everything = len(seq.records)
    keep = masked_indices(seq.records)
    assert len(keep) == Manifest.load(shards).counts["train"].with_mask < everything
    seq.restrict(keep)
    seen = [seq[i] for i in range(len(seq))]
    assert sum(len(b["id"]) for b in seen) == len(keep) and len(seq) == -(-len(keep) // 2)
    assert all(np.all(b["has_mask"] > 0.5) for b in seen)
    seq.on_epoch_end()
    assert sorted(seq.order().tolist()) == sorted(keep.tolist())  # reshuffled, same records


def test_reader_path_refuses_steps_beyond_one_pass(shards: Path) -> None:
    from fusion.train_data import make_run_data

    cfg = preset("demo").replace(model=TINY, train={"batch_size": 4, "steps_per_epoch": 50})
    with pytest.raises(TrainError, match="more than one pass over the train split"):
        make_run_data(shards, cfg)
    n = Manifest.load(shards).counts["train"].slices
    data = make_run_data(shards, cfg.replace(train={"steps_per_epoch": 1}))
    assert len(data.train) == -(-n // 4) and len(data.val_fit) == len(data.val_batches)
    image, targets = data.train[0]
    assert image.shape == (min(4, n), 32, 32, 4) and set(targets) == set(cfg.model.heads)
    assert "id" in data.val_batches[0]  # reader dicts for validate


@needs_jax
@pytest.mark.parametrize("device, policy", [
    ({"platform": "gpu", "compute_capability": "9.0"}, "mixed_bfloat16"),  # H100 / H200
    ({"platform": "gpu", "compute_capability": "7.5"}, "mixed_float16"),  # T4
    ({"platform": "tpu"}, "mixed_bfloat16"),
    ({"platform": "cpu"}, "float32"),
])
def test_precision_from_jax_devices(device: dict, policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import jax

    monkeypatch.setattr(backend, "current_backend", lambda: "jax")
    monkeypatch.setattr(jax, "devices", lambda *a: [SimpleNamespace(**device)])
    assert backend.select_precision() == policy
