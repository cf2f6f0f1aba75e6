"""The model code is backend-agnostic: build and run it on Keras' numpy backend (and jax).

Each backend runs in a fresh subprocess (KERAS_BACKEND is read once, at import). Keras' numpy
backend calls jax for convolutions, so both checks need jax installed; they skip otherwise.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from fusion.config import ModelConfig
    from fusion.model import build_model, window_weights
    shapes = {}
    for fusion in ("attention", "early"):
        model = build_model(ModelConfig(image_size=32, width=4, depth=2, fusion_width=4, groups=2, fusion=fusion))
        x = np.random.default_rng(0).random((2, 32, 32, 4), dtype=np.float32)
        out = model.predict(x, verbose=0)
        shapes[fusion] = {k: list(np.asarray(v).shape) for k, v in out.items()}
        shapes[fusion + "_finite"] = bool(all(np.isfinite(np.asarray(v)).all() for v in out.values()))
    weights = window_weights(build_model(ModelConfig(image_size=32, width=4, depth=2, fusion_width=4, groups=2)), x)
    shapes["weights"] = list(weights.shape)
    shapes["weights_sum"] = float(np.abs(weights.sum(-1) - 1).max())
    pooled = build_model(
        ModelConfig(image_size=32, width=4, depth=2, fusion_width=4, groups=2, class_pooling="attention")
    )
    probs = np.asarray(pooled.predict(x, verbose=0)["class"])
    shapes["attention_pooling"] = [list(probs.shape), bool(np.isfinite(probs).all())]
    shapes["backend"] = keras.backend.backend()
    print("RESULT " + json.dumps(shapes))
    """
)


def run_backend(backend: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [row for row in proc.stdout.splitlines() if row.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def has_jax() -> bool:
    return importlib.util.find_spec("jax") is not None


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_model_runs_on_another_backend(backend: str) -> None:
    if not has_jax():
        pytest.skip(f"jax is not installed: Keras' {backend} backend needs it (pip install jax)")
    res = run_backend(backend)
    assert res["backend"] == backend
    for fusion in ("attention", "early"):
        assert res[fusion] == {"class": [2, 6], "area": [2, 1], "mask": [2, 32, 32, 1]}
        assert res[fusion + "_finite"]
    assert res["weights"] == [2, 32, 32, 4]
    assert res["weights_sum"] < 1e-4
    assert res["attention_pooling"] == [[2, 6], True]


def test_model_modules_do_not_import_tensorflow() -> None:
    # Backend-agnostic by construction: no TensorFlow import in the model code.
    for name in ("config.py", "layers.py", "model.py", "losses.py"):
        text = (REPO / "fusion" / name).read_text()
        assert "import tensorflow" not in text and "from tensorflow" not in text, name
