"""Export a trained model: ``RUN/model.keras`` and the SavedModel ``RUN/export``.

The SavedModel (written with `keras.export.ExportArchive`) has two signatures:

- ``serving_default(images: float32 [B, H, W, 4])`` windows in [0, 1], `WINDOW_NAMES` order;
- ``serve_hu(hu: float32 [B, H, W, 1])`` Hounsfield units, windowed in the graph with
  `data_build.windows.apply_windows` and the run's presets (from the shards' manifest).

Both resize the input to the training size (bilinear) in the graph and return:

| key | shape | dtype | meaning |
|---|---|---|---|
| probabilities | [B, 6] | float32 | sigmoid per `LABEL_NAMES` |
| decisions | [B, 6] | int32 | probabilities >= calibrated thresholds (baked in) |
| area_fraction | [B] | float32 | bleed pixels / all pixels (transform inverted) |
| mask | [B, H, W, 1] | float32 | bleed probabilities at the INPUT size |

A model without an area or mask head (preset peer-cls) returns NaN there: "not predicted".
The export folder also holds ``thresholds.json`` and ``fusion_export.json`` (image size, label
names, presets, area transform) so it can be served on its own.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from data_build import windows
from data_build.files import atomic_write_text, make_temp_dir, ordinary_mode
from data_build.manifest import Manifest, ManifestError
from data_build.schema import LABEL_NAMES
from fusion.config import RunConfig
from fusion.errors import FusionError
from fusion.targets import AREA_SCALE, target_to_area
from fusion.thresholds import Thresholds, ThresholdsError


class ExportError(FusionError):
    """A run folder cannot be exported (missing checkpoint, thresholds or config)."""


def _window_list(presets: Sequence[windows.Window] | None) -> list[windows.Window]:
    """The run's windows, `WINDOW_NAMES` order; the standard presets when the shards are unknown."""
    return list(presets) if presets is not None else [windows.PRESETS[n] for n in windows.WINDOW_NAMES]


def make_serving_fns(
    model: keras.Model,
    image_size: int,
    thresholds: Thresholds,
    presets: Sequence[windows.Window] | None = None,
) -> tuple[Any, Any]:
    """The two serving functions (plain Python callables on tf tensors).

    Returns:
      (serve_images(images [B, H, W, 4]), serve_hu(hu [B, H, W, 1])) each returning the dict of
      the module docstring.
    """
    thresholds_t = tf.constant(thresholds.array.astype(np.float32).reshape(1, len(LABEL_NAMES)))
    window_list = _window_list(presets)
    size = int(image_size)

    def run(images: tf.Tensor) -> dict[str, tf.Tensor]:
        in_hw = tf.shape(images)[1:3]
        batch = tf.shape(images)[0]
        resized = tf.image.resize(images, [size, size], method="bilinear")
        out = model(resized, training=False)
        probs = tf.cast(out["class"], tf.float32)  # [B, 6]
        result = {
            "probabilities": probs,
            "decisions": tf.cast(probs >= thresholds_t, tf.int32),
        }
        if "area" in out:
            target = tf.cast(out["area"], tf.float32)[:, 0]  # [B]
            result["area_fraction"] = target_to_area(target, xp=tnp)
        else:
            result["area_fraction"] = tf.fill([batch], float("nan"))
        if "mask" in out:
            mask = tf.image.resize(tf.cast(out["mask"], tf.float32), in_hw, method="bilinear")
            result["mask"] = tf.clip_by_value(mask, 0.0, 1.0)  # [B, H, W, 1]
        else:
            result["mask"] = tf.fill(tf.concat([[batch], in_hw, [1]], 0), float("nan"))
        return result

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return run(tf.cast(images, tf.float32))

    def serve_hu(hu: tf.Tensor) -> dict[str, tf.Tensor]:
        # The same windowing function as the build and the reader, with this run's presets.
        images = windows.apply_windows(tf.cast(hu, tf.float32), presets=window_list, xp=tnp)
        return run(tf.cast(images, tf.float32))

    return serve_images, serve_hu


def write_savedmodel(
    model: keras.Model,
    path: Path,
    image_size: int,
    thresholds: Thresholds,
    presets: Sequence[windows.Window] | None = None,
) -> Path:
    """Write the SavedModel to `path` atomically (temporary folder, then rename)."""
    serve_images, serve_hu = make_serving_fns(model, image_size, thresholds, presets)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # serving_default first: the first endpoint is also TF-Serving's default.
    archive.add_endpoint(
        name="serving_default",
        fn=serve_images,
        input_signature=[tf.TensorSpec([None, None, None, len(windows.WINDOW_NAMES)], tf.float32, name="images")],
    )
    archive.add_endpoint(
        name="serve_hu",
        fn=serve_hu,
        input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="hu")],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(path.parent, f".{path.name}.")  # readable by others as the umask allows
    try:
        archive.write_out(str(tmp), verbose=False)
        _write_sidecars(tmp, image_size, thresholds, presets)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write_sidecars(
    folder: Path, image_size: int, thresholds: Thresholds, presets: Sequence[windows.Window] | None
) -> None:
    """thresholds.json (the same writer as the run folder's) and fusion_export.json."""
    thresholds.save(folder)
    info = {
        "image_size": int(image_size),
        "label_names": list(LABEL_NAMES),
        "window_names": list(windows.WINDOW_NAMES),
        "presets": {w: [p.level, p.width] for w, p in zip(windows.WINDOW_NAMES, _window_list(presets))},
        "thresholds": thresholds.to_dict()["thresholds"],
        "area_transform": f"area output = log1p(fraction * {AREA_SCALE:g}); served as the fraction",
        "signatures": {"serving_default": "images float32 [B, H, W, 4] in [0, 1]",
                       "serve_hu": "hu float32 [B, H, W, 1] in HU"},
    }
    atomic_write_text(folder / "fusion_export.json", json.dumps(info, indent=2) + "\n")


def save_keras(model: keras.Model, path: Path) -> None:
    """model.save to a temporary name in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp)
        os.chmod(tmp, ordinary_mode())  # mkstemp's 0600 would make the model private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_model(
    model: keras.Model,
    run_dir: str | Path,
    cfg: RunConfig,
    thresholds: Thresholds,
    presets: Sequence[windows.Window] | None = None,
) -> Path:
    """Save ``RUN/model.keras`` and write ``RUN/export``. Returns the export folder."""
    run_dir = Path(run_dir)
    save_keras(model, run_dir / "model.keras")
    return write_savedmodel(model, run_dir / "export", cfg.model.image_size, thresholds, presets)


def export_run(run_dir: str | Path, shards_dir: str | Path | None = None) -> Path:
    """Re-export a finished run from its files (best.keras, thresholds.json, config.json).

    Args:
      run_dir: the run folder.
      shards_dir: shards whose manifest gives the window presets (default: the standard
        presets of `data_build.windows`).

    Raises:
      ExportError: a file of the run is missing or unreadable.
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "thresholds.json"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir / name} is missing: is {run_dir} a finished fusion-train run?")
    model_path = run_dir / "best.keras"
    if not model_path.is_file():
        model_path = run_dir / "model.keras"
    if not model_path.is_file():
        raise ExportError(f"{run_dir} has neither best.keras nor model.keras; train first")
    cfg = RunConfig.load(run_dir / "config.json")
    try:
        thresholds = Thresholds.load(run_dir)
    except ThresholdsError as err:
        raise ExportError(f"cannot read thresholds: {err}") from None
    presets = None
    if shards_dir is not None:
        try:
            presets = Manifest.load(shards_dir).presets
        except ManifestError as err:
            raise ExportError(str(err)) from None
    model = keras.saving.load_model(model_path, compile=False)
    return export_model(model, run_dir, cfg, thresholds, presets)
