"""Export: SavedModel with two signatures, reloaded in a fresh process, matches Keras."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from data_build import windows
from data_build.schema import LABEL_NAMES
from data_build.windows import Window
from fusion.config import RunConfig
from fusion.export import ExportError, export_dir, export_model, export_run
from fusion.inference import ModelLoadError
from fusion.model import build_model
from fusion.thresholds import Thresholds

SIZE = 32
# Mask threshold 0.52: a random model's mask probabilities sit near 0.5, so a served
# mask_uint8 cut at 0.5 instead would differ.
THRESHOLDS = Thresholds.from_array(np.array([0.5, 0.4, 0.6, 0.3, 0.5, 0.45], np.float32), mask=0.52)
PRESETS = (Window(40.0, 80.0), Window(75.0, 215.0), Window(600.0, 2800.0), Window(40.0, 40.0))

RELOAD = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    folder, out = sys.argv[1], sys.argv[2]
    loaded = tf.saved_model.load(folder)
    arrays = np.load(out + "/inputs.npz")
    results = {}
    for name, key in (("serving_default", "images"), ("serve_hu", "hu")):
        fn = loaded.signatures[name]
        for tag in ("same", "other"):
            res = fn(**{key: tf.constant(arrays[key + "_" + tag])})
            for k, v in res.items():
                results[f"{name}/{tag}/{k}"] = v.numpy()
    np.savez(out + "/outputs.npz", **results)
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, keras.Model, RunConfig]:
    run = tmp_path_factory.mktemp("run")
    cfg = RunConfig().replace(model={"image_size": SIZE, "width": 4, "depth": 2, "fusion_width": 4})
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    export_model(model, run, cfg, THRESHOLDS, PRESETS)
    return run, model, cfg


def keras_reference(model: keras.Model, images: np.ndarray, tta: str = "flip") -> dict[str, np.ndarray]:
    """What a signature should return, from the Keras model: one pass, or (``tta="flip"``, the
    export's default) the mean of the image's pass and its mirror's, the mask un-mirrored."""
    h, w = images.shape[1:3]
    resized = tf.image.resize(images, [SIZE, SIZE], method="bilinear").numpy()
    passes = [(resized, lambda m: m)]
    if tta == "flip":
        passes.append((resized[:, :, ::-1].copy(), lambda m: m[:, :, ::-1]))
    outs = [model(x, training=False) for x, _ in passes]
    probs = np.mean([np.asarray(o["class"]) for o in outs], axis=0)
    area = np.mean([np.clip(np.expm1(np.asarray(o["area"])[:, 0]) / 1e3, 0, 1) for o in outs], axis=0)
    mask = np.mean([unflip(np.asarray(o["mask"])) for o, (_, unflip) in zip(outs, passes)], axis=0)
    return {
        "probabilities": probs,
        "decisions": (probs >= THRESHOLDS.array.astype(np.float32)).astype(np.int32),
        "area_fraction": area,
        "mask": tf.image.resize(mask, [h, w], method="bilinear").numpy(),
    }


def test_files_written(exported: tuple[Path, keras.Model, RunConfig]) -> None:
    run, _, _ = exported
    assert (run / "model.keras").is_file()
    version = run / "export" / "1"
    assert (version / "saved_model.pb").is_file()
    info = json.loads((version / "fusion_export.json").read_text())
    assert info["image_size"] == SIZE
    assert info["presets"]["subdural_window"] == [75.0, 215.0]
    assert "[0, 1]" in info["signatures"]["serving_default"]
    assert "colour map inverted" in info["signatures"]["serving_default"]
    assert "Hounsfield" in info["signatures"]["serve_hu"]
    readme = (version / "README.md").read_text()
    assert "serving_default" in readme and "serve_hu" in readme and "model_base_path" in readme
    thresholds = json.loads((version / "thresholds.json").read_text())["thresholds"]
    assert list(thresholds) == list(LABEL_NAMES)
    assert info["mask_threshold"] == 0.52 and "(mask >= 0.52;" in readme
    assert info["tta"] == "flip" and "Test-time augmentation: flip" in readme  # the default
    assert json.loads((version / "thresholds.json").read_text())["mask_threshold"] == 0.52
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_savedmodel_in_fresh_process_matches_keras(
    exported: tuple[Path, keras.Model, RunConfig], tmp_path: Path
) -> None:
    run, model, _ = exported
    rng = np.random.default_rng(0)
    inputs = {
        "images_same": rng.random((2, SIZE, SIZE, 4), dtype=np.float32),
        "images_other": rng.random((1, 40, 24, 4), dtype=np.float32),
        "hu_same": rng.normal(40, 300, (2, SIZE, SIZE, 1)).astype(np.float32),
        "hu_other": rng.normal(40, 300, (1, 48, 40, 1)).astype(np.float32),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(run / "export" / "1"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(np.load(tmp_path / "outputs.npz"))
    window_list = list(PRESETS)
    for name, key in (("serving_default", "images"), ("serve_hu", "hu")):
        for tag in ("same", "other"):
            x = inputs[f"{key}_{tag}"]
            if key == "hu":
                x = windows.apply_windows(x, presets=window_list).astype(np.float32)
            ref = keras_reference(model, x)
            b, h, w = x.shape[:3]
            prefix = f"{name}/{tag}/"
            assert got[prefix + "probabilities"].shape == (b, 6)
            assert got[prefix + "probabilities"].dtype == np.float32
            assert got[prefix + "decisions"].dtype == np.int32
            assert got[prefix + "area_fraction"].shape == (b,)
            assert got[prefix + "mask"].shape == (b, h, w, 1)  # the INPUT size
            for k in ("probabilities", "area_fraction", "mask"):
                np.testing.assert_allclose(got[prefix + k], ref[k], atol=1e-4, err_msg=prefix + k)
            # The small REST answer: the served mask at the run's mask threshold, as uint8 0/1.
            assert got[prefix + "mask_uint8"].dtype == np.uint8
            np.testing.assert_array_equal(got[prefix + "mask_uint8"],
                                          (got[prefix + "mask"] >= THRESHOLDS.mask).astype(np.uint8))
            # Decisions equal the baked-in thresholds applied to the served probabilities.
            np.testing.assert_array_equal(
                got[prefix + "decisions"],
                (got[prefix + "probabilities"] >= THRESHOLDS.array.astype(np.float32)).astype(np.int32),
            )


def test_export_run_requires_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="config.json"):
        export_run(tmp_path)


def test_export_layout_is_a_tf_serving_base_path(exported: tuple[Path, keras.Model, RunConfig]) -> None:
    """TF Serving's --model_base_path wants numeric version folders, each a whole SavedModel."""
    run, _, _ = exported
    base = run / "export"
    versions = [p for p in base.iterdir() if not p.name.startswith(".")]
    assert [p.name for p in versions] == ["1"]
    assert (base / "1" / "saved_model.pb").is_file()
    assert (base / "1" / "variables" / "variables.index").is_file()
    assert list((base / "1" / "variables").glob("variables.data-*"))
    assert not (base / "saved_model.pb").exists()  # nothing at the base but versions


def test_saved_model_cli_lists_both_signatures(exported: tuple[Path, keras.Model, RunConfig]) -> None:
    cli = Path(sys.executable).parent / "saved_model_cli"
    if not cli.is_file():
        pytest.skip("saved_model_cli is not installed next to this Python")
    run, _, _ = exported
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(cli), "show", "--dir", str(run / "export" / "1"), "--all"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "signature_def['serving_default']" in text and "signature_def['serve_hu']" in text
    assert "inputs['images']" in text and "inputs['hu']" in text
    assert "outputs['mask_uint8']" in text and "DT_UINT8" in text


def test_load_predictor_finds_versions_and_old_exports(
    exported: tuple[Path, keras.Model, RunConfig], tmp_path: Path
) -> None:
    import shutil

    from fusion.inference import load_predictor

    run, _, _ = exported
    for given in (run, run / "export", run / "export" / "1"):
        pred = load_predictor(given)
        assert pred.path == run / "export" / "1"
        assert pred.run_dir == (run if given != run / "export" / "1" else None)
    # A second version: the highest number wins, as in TF Serving.
    other = tmp_path / "run"
    shutil.copytree(run / "export" / "1", other / "export" / "1")
    shutil.copytree(run / "export" / "1", other / "export" / "12")
    shutil.copytree(run / "export" / "1", other / "export" / "3")
    assert load_predictor(other).path == other / "export" / "12"
    # An unversioned export of an older run still loads.
    old = tmp_path / "old"
    shutil.copytree(run / "export" / "1", old / "export")
    assert load_predictor(old).path == old / "export"


@pytest.mark.parametrize("bad", [0, -1, "1", 1.5, True])
def test_export_version_must_be_a_positive_integer(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="positive integer"):
        export_dir(tmp_path, bad)  # type: ignore[arg-type]


def test_flip_in_the_graph_equals_flip_on_the_host(
    exported: tuple[Path, keras.Model, RunConfig], tmp_path: Path
) -> None:
    """--export-tta none: one pass per call, and the Predictor's host-side flip on it gives
    what the default export's graph gives; a flip export refuses a one-pass request and
    open_model reads the run's model.keras for it instead."""
    from fusion.inference import PredictInputError, load_predictor
    from fusion.keras_predictor import KerasPredictor, open_model

    run, model, cfg = exported
    single = tmp_path / "single"
    single.mkdir()
    export_model(model, single, cfg, THRESHOLDS, PRESETS, tta="none")
    info = json.loads((single / "export" / "1" / "fusion_export.json").read_text())
    assert info["tta"] == "none"
    assert "Test-time augmentation: none" in (single / "export" / "1" / "README.md").read_text()
    x = np.random.default_rng(1).random((3, 40, 24, 4), dtype=np.float32)
    in_graph, on_host = load_predictor(run), load_predictor(single)
    assert (in_graph.graph_tta, in_graph.exported_tta, on_host.graph_tta) == ("flip", "flip", "none")
    graph_flip = in_graph.predict(x)  # the export's own: flip
    host_flip = on_host.predict(x, tta="flip")
    for k in ("probabilities", "area_fraction", "mask"):
        np.testing.assert_allclose(graph_flip[k], host_flip[k], atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(graph_flip["decisions"], host_flip["decisions"])
    one_pass = on_host.predict(x)  # that export's own: one pass
    ref = keras_reference(model, x, tta="none")
    np.testing.assert_allclose(one_pass["mask"], ref["mask"], atol=1e-4)
    assert not np.allclose(one_pass["mask"], graph_flip["mask"], atol=1e-4)  # the flip did something
    with pytest.raises(PredictInputError, match="cannot run tta=none: load the run.s model.keras"):
        in_graph.predict(x, tta="none")
    reader = open_model(run, "tensorflow", "none")
    assert isinstance(reader, KerasPredictor)
    np.testing.assert_allclose(reader.predict(x, tta="none")["mask"], one_pass["mask"], atol=1e-4)
    assert open_model(run, "tensorflow", "flip").path == run / "export" / "1"
    import shutil

    full = tmp_path / "full"  # a run folder as fusion-train leaves it (config.json marks it)
    shutil.copytree(run, full)
    cfg.save(full / "config.json")
    assert isinstance(open_model(full / "export" / "1", "tensorflow", "none"), KerasPredictor)  # its run's
    alone = tmp_path / "alone"  # a flip SavedModel without its run folder: a clear refusal
    shutil.copytree(run / "export" / "1", alone)
    with pytest.raises(ModelLoadError, match="no model.keras or best.keras beside it to run --tta none"):
        open_model(alone, "tensorflow", "none")


def test_export_tta_must_be_known(exported: tuple[Path, keras.Model, RunConfig], tmp_path: Path) -> None:
    import shutil

    from fusion.export import reexport_tta

    run, _, _ = exported
    with pytest.raises(ExportError, match="tta must be one of none, flip"):
        export_run(run, tta="mirror")
    assert reexport_tta(tmp_path, None) == "flip"  # no export yet: the default
    assert reexport_tta(run, None) == "flip" and reexport_tta(run, "none") == "none"
    old = tmp_path / "old"  # an export from before the key: one pass, and a re-export keeps it
    shutil.copytree(run / "export" / "1", old / "export" / "1")
    info = json.loads((old / "export" / "1" / "fusion_export.json").read_text())
    del info["tta"]
    (old / "export" / "1" / "fusion_export.json").write_text(json.dumps(info))
    assert reexport_tta(old, None) == "none"
    shutil.copy(run / "model.keras", old / "model.keras")  # export_run keeps it too (the Python API)
    cfg = RunConfig().replace(model={"image_size": SIZE, "width": 4, "depth": 2, "fusion_width": 4})
    cfg.save(old / "config.json")
    THRESHOLDS.save(old)
    export_run(old, version=2)
    assert json.loads((old / "export" / "2" / "fusion_export.json").read_text())["tta"] == "none"
    info["tta"] = "rot90"  # in the latest export, 2
    (old / "export" / "2" / "fusion_export.json").write_text(json.dumps(info))
    with pytest.raises(ExportError, match=r"2/fusion_export.json names tta 'rot90'"):
        reexport_tta(old, None)
