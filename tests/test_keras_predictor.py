"""`fusion-evaluate` / `fusion-predict` on RUN/model.keras, on every Keras backend.

One run folder holds a tiny untrained model with fixed weights: its model.keras and, written by
`fusion.export`, its SavedModel. The TensorFlow SavedModel path is the reference; the same
model.keras must give the same probabilities, areas, masks and metrics on TensorFlow (in this
process), JAX and PyTorch (fresh subprocesses with TensorFlow's import blocked, `BLOCKED`).
PyTorch is not in the test extra (too heavy for CI): its case runs
when `torch` imports in ``$FUSION_TORCH_PYTHON`` (an interpreter with torch and this package's
dependencies; default this one) and skips otherwise.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_train_backends import TINY

from data_build import records
from data_build.manifest import Manifest
from data_build.schema import LABEL_NAMES
from data_build.synth.writer import write_synthetic_drop
from data_build.windows import WINDOW_NAMES, canonical_window_name
from fusion.config import preset
from fusion.inference import ModelLoadError, load_predictor
from fusion.thresholds import Thresholds

REPO = Path(__file__).resolve().parents[1]
#: Far from the untrained model's probabilities (~0.5), so float rounding cannot flip a decision.
THRESHOLDS = (0.1, 0.9, 0.1, 0.9, 0.1, 0.9)
#: Like tests/test_train_backends.py's blocker, but a probe (``importlib.util.find_spec``) gets a
#: spec and only an import fails: torch._dynamo probes for TensorFlow at import and takes a
#: finder's error for a crash. Runs $SCRIPT; prints every blocked import at exit.
BLOCKED = textwrap.dedent(
    """
    import atexit, importlib.abc, importlib.machinery, os, sys

    attempts = []

    class Blocked(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            attempts.append(module.__name__)
            raise ImportError(f"blocked for this test: {module.__name__}")

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return importlib.machinery.ModuleSpec(name, Blocked(), origin="blocked")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    atexit.register(lambda: print("TF_IMPORTS", len(attempts), attempts[:3]))
    exec(os.environ["SCRIPT"])
    """
)
#: Runs the CLI calls of $RUNS ([name, "evaluate" | "predict" | "train", argv]) and prints their results.
CALLS = textwrap.dedent(
    """
    import json, os
    from click.testing import CliRunner
    from fusion.cli import evaluate, predict, train
    results = {}
    for name, command, argv in json.loads(os.environ["RUNS"]):
        commands = {"evaluate": evaluate.main, "predict": predict.main, "train": train.main}
        result = CliRunner().invoke(commands[command], argv)
        crash = result.exception if not isinstance(result.exception, SystemExit) else None
        results[name] = [result.exit_code, result.output + (repr(crash) if crash else "")]
    print("RESULTS " + json.dumps(results))
    """
)


def importable(python: str, module: str) -> bool:
    if python == sys.executable:
        return importlib.util.find_spec(module) is not None
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code], capture_output=True, timeout=120).returncode == 0


#: The interpreter each backend's subprocess runs in.
PYTHONS = {"jax": sys.executable, "torch": os.environ.get("FUSION_TORCH_PYTHON") or sys.executable}
needs = {
    name: pytest.mark.skipif(not importable(python, name), reason=f"{name} is not installed in {python}"
                             + (" (set FUSION_TORCH_PYTHON)" if name == "torch" else " (pip install -e .[test])"))
    for name, python in PYTHONS.items()
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (config, thresholds, model.keras, export/1) and its shards beside it."""
    import keras

    from fusion.export import export_model
    from fusion.model import build_model

    work = tmp_path_factory.mktemp("keras_predictor")
    write_synthetic_drop(work / "drop", n_patients=6, slices_per_patient=3, size=64, seed=0)
    records.build(work / "drop", work / "shards", source="render", workers=1, shard_size=3,
                  fractions=(0.4, 0.2, 0.4), progress=False)
    cfg = preset("demo").replace(model=TINY)
    keras.utils.set_random_seed(3)
    run = work / "run"
    run.mkdir()
    cfg.save(run / "config.json")
    thresholds = Thresholds.from_array(THRESHOLDS)
    thresholds.save(run)
    export_model(build_model(cfg.model), run, cfg, thresholds, Manifest.load(work / "shards").presets)
    rng = np.random.default_rng(0)
    inputs = work / "inputs"
    inputs.mkdir()
    np.save(inputs / "windows.npy", rng.random((40, 48, 4), dtype=np.float32))
    np.save(inputs / "hu.npy", rng.uniform(-100, 200, (40, 48)).astype(np.float32))
    save_render(work / "drop" / "renders", inputs)
    return run


def save_render(renders: Path, inputs: Path) -> None:
    """One slice's four window renders as a render folder, and the same slice decoded by
    `fusion.reader` (the decoder off TensorFlow) as ``render_as_npy.npy``."""
    from fusion.reader import codes_to_grey, decode_window

    sources = sorted((renders / "epidural").glob("*/*.jpg"))
    slice_id = sources[0].stem
    grey = {}
    for path in (p for p in sources if p.stem == slice_id):
        target = inputs / "renders" / "epidural" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        codes, table = decode_window(path.read_bytes(), 64, 1)
        grey[canonical_window_name(path.parent.name)] = codes_to_grey(codes[None, ..., None], np.array([[table]]))
    np.save(inputs / "render_as_npy.npy", np.concatenate([grey[w] for w in WINDOW_NAMES], -1)[0])


def calls(run: Path, out: Path, backend: str, model: Path | None = None) -> list[list]:
    """fusion-evaluate and fusion-predict on `backend`, flip TTA, inputs at another size."""
    shards, inputs, model = run.parent / "shards", run.parent / "inputs", model or run
    common = ["--backend", backend, "--tta", "flip"]
    return [
        ["evaluate", "evaluate", [str(model), str(shards), "--out", str(out / "eval"), "--bootstrap", "0",
                                  *common]],
        ["predict", "predict", [str(model), str(inputs), "--out", str(out / "pred"), *common]],
    ]


def run_elsewhere(backend: str, python: str, runs: list[list]) -> dict[str, list]:
    """The CLI calls in a fresh `python` on `backend`, TensorFlow's import blocked."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "SCRIPT": CALLS,
           "RUNS": json.dumps(runs), "KERAS_BACKEND": backend}
    proc = subprocess.run([python, "-c", BLOCKED], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "TF_IMPORTS 0 " in proc.stdout, proc.stdout[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


def run_here(runs: list[list]) -> dict[str, list]:
    from fusion.cli import evaluate, predict

    commands = {"evaluate": evaluate.main, "predict": predict.main}
    results = {name: CliRunner().invoke(commands[cmd], argv) for name, cmd, argv in runs}
    return {name: [r.exit_code, r.output] for name, r in results.items()}


def table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def assert_same_numbers(got: dict[str, dict[str, str]], want: dict[str, dict[str, str]],
                        columns: list[str], atol: float) -> None:
    assert got.keys() == want.keys()
    for key, row in want.items():
        for col in columns:
            a, b = got[key][col], row[col]
            assert (a == b == "") or abs(float(a) - float(b)) <= atol, (key, col, a, b)


def assert_same_outputs(out: Path, ref: Path, same_decoder: bool = True) -> None:
    """metrics.json, the evaluation's predictions.csv and fusion-predict's predictions.csv agree.

    `same_decoder` False (off TensorFlow): the render folder is decoded by `fusion.reader`
    (OpenCV's accurate integer IDCT) and on TensorFlow by tf.data (``INTEGER_FAST``); at full
    size these differ by up to ~0.05 on bone-mapped colour renders, so that row is compared with
    the same slice decoded by `fusion.reader` and given as an array instead.
    """
    got, want = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (out, ref))
    assert got["n_slices"] == want["n_slices"] > 0
    assert got["thresholds"] == want["thresholds"] and got["threshold_source"] == want["threshold_source"]
    assert got["summary"].keys() == want["summary"].keys()
    for key, value in want["summary"].items():
        assert value is None and got["summary"][key] is None or abs(got["summary"][key] - value) < 1e-4, key
    probs = [f"p_{n}" for n in LABEL_NAMES]
    decisions = [f"decision_{n}" for n in LABEL_NAMES]
    assert_same_numbers(table(out / "eval" / "predictions.csv"), table(ref / "eval" / "predictions.csv"),
                        [*probs, *decisions, "area_fraction_pred", "dice"], 2e-5)
    rows, want_rows = table(out / "pred" / "predictions.csv"), table(ref / "pred" / "predictions.csv")
    assert len(rows) == 4 and {r["source"] for r in rows.values()} == {"npy", "render"}
    render = next(key for key, row in rows.items() if row["source"] == "render")
    if not same_decoder:
        assert_same_numbers({render: rows["render_as_npy"]}, {render: rows[render]}, probs, 0)
        rows, want_rows = ({k: v for k, v in t.items() if k != render} for t in (rows, want_rows))
    # fusion-predict rounds to 4 decimals: one unit of the last digit may differ.
    assert_same_numbers(rows, want_rows, [*probs, *decisions, "area_fraction"], 1.5e-4)
    # A pixel within float rounding of the mask threshold may flip; no more than that.
    assert_same_numbers(rows, want_rows, ["mask_pixels"], 2)


@pytest.fixture(scope="module")
def reference(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TensorFlow SavedModel path's outputs (the run folder on --backend tensorflow)."""
    out = tmp_path_factory.mktemp("reference")
    for name, (code, output) in run_here(calls(run, out, "tensorflow")).items():
        assert code == 0, (name, output)
    return out


def test_keras_file_on_tensorflow_matches_the_savedmodel(run: Path, reference: Path, tmp_path: Path) -> None:
    results = run_here(calls(run, tmp_path, "tensorflow", model=run / "model.keras"))
    for name, (code, output) in results.items():
        assert code == 0, (name, output)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"].endswith("model.keras")
    assert_same_outputs(tmp_path, reference)


@pytest.mark.parametrize("backend", [pytest.param(name, marks=needs[name]) for name in PYTHONS])
def test_other_backends_match_the_savedmodel(backend: str, run: Path, reference: Path, tmp_path: Path) -> None:
    results = run_elsewhere(backend, PYTHONS[backend], calls(run, tmp_path, backend))
    for name, (code, output) in results.items():
        assert code == 0, (name, output)
    assert_same_outputs(tmp_path, reference, same_decoder=False)


@needs["jax"]
def test_savedmodel_is_refused_off_tensorflow(run: Path, tmp_path: Path) -> None:
    export = run / "export" / "1"
    runs = [[name, cmd, [str(export), *argv[1:]]] for name, cmd, argv in calls(run, tmp_path, "jax")]
    results = run_elsewhere("jax", sys.executable, runs)
    for name, (code, output) in results.items():
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1, (name, output)
        assert f"{export} is a TensorFlow SavedModel, which the jax backend cannot load" in lines[0]
        assert f"pass {run / 'model.keras'}, or install TensorFlow" in lines[0]


def test_open_model_errors(run: Path, tmp_path: Path) -> None:
    from fusion.keras_predictor import open_model

    with pytest.raises(ModelLoadError, match="does not exist"):
        open_model(tmp_path / "missing", "jax")
    with pytest.raises(ModelLoadError, match="neither a .keras file nor a run folder"):
        open_model(tmp_path, "jax")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="could not load the Keras model"):
        open_model(broken, "tensorflow")
    # On TensorFlow a run folder with an export still means its SavedModel.
    assert open_model(run, "tensorflow").path == load_predictor(run).path == run / "export" / "1"


@needs["torch"]
def test_torch_trains_then_evaluates_and_predicts(run: Path, tmp_path: Path) -> None:
    """fusion-train --backend torch end to end (TensorFlow blocked), then its model.keras scored."""
    config, trained = tmp_path / "tiny.json", tmp_path / "run"
    preset("demo").replace(model=TINY, train={"epochs": 2, "batch_size": 4, "patience": 0}).save(config)
    shards = run.parent / "shards"
    fit = ["train", "train", [str(shards), "--out", str(trained), "--config", str(config), "--backend", "torch",
                              "--quiet"]]
    results = run_elsewhere("torch", PYTHONS["torch"], [fit, *calls(run, tmp_path, "torch", model=trained)])
    for name, (code, output) in results.items():
        assert code == 0, (name, output)
    assert "backend torch, precision policy float32" in results["train"][1]
    with open(trained / "history.csv", newline="") as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert (trained / "model.keras").is_file() and (trained / "EXPORT_LATER.txt").is_file()
    assert not (trained / "export").exists()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_slices"] == Manifest.load(shards).counts["test"].slices
    assert metrics["threshold_source"] == "model (calibrated on val)"
    assert len(table(tmp_path / "pred" / "predictions.csv")) == 4


def test_tensorflow_runs_an_unexported_run_from_its_model_keras(run: Path, tmp_path: Path) -> None:
    """A run trained off TensorFlow (no export yet) is still usable on TensorFlow."""
    import shutil

    from fusion.keras_predictor import KerasPredictor, open_model

    plain = tmp_path / "run"
    shutil.copytree(run, plain, ignore=shutil.ignore_patterns("export"))
    predictor = open_model(plain, "tensorflow")
    assert isinstance(predictor, KerasPredictor) and predictor.path == plain / "model.keras"
    assert predictor.image_size == TINY["image_size"]
    np.testing.assert_allclose(predictor.thresholds, THRESHOLDS)


def test_an_unexported_run_windows_hu_with_its_own_presets(run: Path, tmp_path: Path) -> None:
    """RUN/windows.json (written by a run off TensorFlow) names the presets until an export does."""
    import shutil

    from data_build.windows import Window
    from fusion.keras_predictor import open_model
    from fusion.run_folder import WINDOWS_FILE, window_table

    plain = tmp_path / "run"
    shutil.copytree(run, plain, ignore=shutil.ignore_patterns("export"))
    own = tuple(Window(30.0 + i, 90.0 + i) for i in range(len(WINDOW_NAMES)))
    (plain / WINDOWS_FILE).write_text(json.dumps(window_table(own)))
    assert open_model(plain, "tensorflow").presets == own


def test_presets_come_from_the_export() -> None:
    from data_build.windows import Window
    from fusion.keras_predictor import presets_from_export

    table = {name: [10.0 * i, 100.0 + i] for i, name in enumerate(WINDOW_NAMES)}
    assert presets_from_export({"presets": table}) == tuple(
        Window(10.0 * i, 100.0 + i) for i in range(len(WINDOW_NAMES)))
    assert presets_from_export({}) is None
    assert presets_from_export({"presets": {"brain": "wide"}}) is None


def test_a_model_without_presets_beside_it_gets_the_standard_ones_and_a_warning(
        run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    from data_build.windows import PRESETS
    from fusion.keras_predictor import open_model

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "model.keras", alone / "model.keras")
    with caplog.at_level("WARNING"):
        predictor = open_model(alone / "model.keras", "tensorflow")
    assert predictor.presets == tuple(PRESETS[n] for n in WINDOW_NAMES)
    assert "no window presets found" in caplog.text
