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
from fusion.export import ExportError, export_model, export_run
from fusion.model import build_model
from fusion.thresholds import Thresholds

SIZE = 32
THRESHOLDS = Thresholds.from_array(np.array([0.5, 0.4, 0.6, 0.3, 0.5, 0.45], np.float32))
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


def keras_reference(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    h, w = images.shape[1:3]
    resized = tf.image.resize(images, [SIZE, SIZE], method="bilinear")
    out = model(resized, training=False)
    probs = np.asarray(out["class"])
    mask = tf.image.resize(np.asarray(out["mask"]), [h, w], method="bilinear").numpy()
    return {
        "probabilities": probs,
        "decisions": (probs >= THRESHOLDS.array.astype(np.float32)).astype(np.int32),
        "area_fraction": np.clip(np.expm1(np.asarray(out["area"])[:, 0]) / 1e3, 0, 1),
        "mask": mask,
    }


def test_files_written(exported: tuple[Path, keras.Model, RunConfig]) -> None:
    run, _, _ = exported
    assert (run / "model.keras").is_file()
    assert (run / "export" / "saved_model.pb").is_file()
    info = json.loads((run / "export" / "fusion_export.json").read_text())
    assert info["image_size"] == SIZE
    assert info["presets"]["subdural_window"] == [75.0, 215.0]
    thresholds = json.loads((run / "export" / "thresholds.json").read_text())["thresholds"]
    assert list(thresholds) == list(LABEL_NAMES)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_savedmodel_in_fresh_process_matches_keras(exported: tuple[Path, keras.Model, RunConfig], tmp_path: Path) -> None:
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
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(run / "export"), str(tmp_path)],
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
            # Decisions equal the baked-in thresholds applied to the served probabilities.
            np.testing.assert_array_equal(
                got[prefix + "decisions"], (got[prefix + "probabilities"] >= THRESHOLDS.array.astype(np.float32)).astype(np.int32)
            )


def test_export_run_requires_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="config.json"):
        export_run(tmp_path)
