"""Export a trained model: ``RUN/model.keras`` and the SavedModel ``RUN/export/<version>/``.

``RUN/export`` is a TF Serving base path: each numbered subfolder (default 1,
``fusion-train --export-version N``) is one servable version holding ``saved_model.pb`` and
``variables/``, plus ``README.md`` and ``fusion_export.json`` stating each signature's input
contract (`SIGNATURES`). Serve it with ``--model_base_path=RUN/export``.

The SavedModel (written with `keras.export.ExportArchive`) has two signatures:

- ``serving_default(images: float32 [B, H, W, 4])`` windows in [0, 1], `WINDOW_NAMES` order;
- ``serve_hu(hu: float32 [B, H, W, 1])`` Hounsfield units, windowed in the graph with
  `data_build.windows.apply_windows` and the run's presets (from the shards' manifest).

Both resize the input to the training size (bilinear) in the graph, run the model on it and,
with flip test-time augmentation (``tta="flip"``, the default, as in fusion-evaluate and
fusion-predict), on its left-right mirror too, averaging the two passes (the mask un-mirrored
first) before the thresholds cut them; ``tta="none"`` (``fusion-train --export-tta none``) is
one pass, ~0.6x the latency. ``fusion_export.json`` records which. They return:

| key | shape | dtype | meaning |
|---|---|---|---|
| probabilities | [B, 6] | float32 | sigmoid per `LABEL_NAMES` |
| decisions | [B, 6] | int32 | probabilities >= calibrated thresholds (baked in) |
| area_fraction | [B] | float32 | bleed pixels / all pixels (transform inverted) |
| mask | [B, H, W, 1] | float32 | bleed probabilities at the INPUT size |
| mask_uint8 | [B, H, W, 1] | uint8 | mask >= the run's calibrated mask threshold as 0/1 (small REST answers) |

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
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from data_build import windows
from data_build.files import atomic_write_text, make_temp_dir
from data_build.manifest import Manifest, ManifestError
from data_build.schema import LABEL_NAMES
from fusion.config import RunConfig
from fusion.errors import FusionError
from fusion.inference import DEFAULT_TTA, TTA_MODES, ModelLoadError, latest_version, read_json_dict, tta_of_export
from fusion.model import inference_model
from fusion.run_folder import EXPORT_NOTE, find_checkpoint, save_keras
from fusion.targets import AREA_SCALE, target_to_area
from fusion.thresholds import Thresholds, ThresholdsError

#: Servable version written when none is given (TF Serving loads the highest number).
DEFAULT_EXPORT_VERSION = 1
#: Each signature's input contract, written into README.md and fusion_export.json.
SIGNATURES: dict[str, str] = {
    "serving_default": (
        "images: float32 [B, H, W, 4], four grey window images in [0, 1], channels in "
        "window_names order (brain, subdural, brain_bone, max_contrast). A render of the drop "
        "must be turned to grey first: its bone colour map inverted (data_build.renders."
        "rgb_to_grey), then divided by 255. Any H, W (resized in the graph)."
    ),
    "serve_hu": (
        "hu: float32 [B, H, W, 1], raw Hounsfield units (stored value x RescaleSlope + "
        "RescaleIntercept), windowed in the graph with the presets below. Any H, W."
    ),
}


#: What README.md of the export says about each `tta` (fusion_export.json holds the mode).
TTA_README: dict[str, str] = {
    "flip": ("Test-time augmentation: flip. Each call runs the model on the image and on its "
             "left-right mirror and averages the two (as fusion-evaluate and fusion-predict do by "
             "default), so its outputs are those the run's held-out figures were measured with; "
             "1.6-1.9x the latency of one pass on CPU (one pass: `fusion-train SHARDS --out RUN "
             "--export-only --export-tta none --export-version N`)."),
    "none": ("Test-time augmentation: none. One model pass per call; fusion-evaluate's default "
             "figures average a mirrored pass too (`fusion-train SHARDS --out RUN --export-only "
             "--export-tta flip --export-version N` puts it in the graph)."),
}


class ExportError(FusionError):
    """A run folder cannot be exported (missing checkpoint, thresholds or config)."""


def check_tta(tta: str) -> None:
    """ExportError unless `tta` is one of `TTA_MODES`."""
    if tta not in TTA_MODES:
        raise ExportError(f"export tta must be one of {', '.join(TTA_MODES)}; got {tta!r}")


def _window_list(presets: Sequence[windows.Window] | None) -> list[windows.Window]:
    """The run's windows, `WINDOW_NAMES` order; the standard presets when the shards are unknown."""
    return list(presets) if presets is not None else [windows.PRESETS[n] for n in windows.WINDOW_NAMES]


def make_serving_fns(
    model: keras.Model,
    image_size: int,
    thresholds: Thresholds,
    presets: Sequence[windows.Window] | None = None,
    tta: str = DEFAULT_TTA,
) -> tuple[Any, Any]:
    """The two serving functions (plain Python callables on tf tensors).

    Args:
      tta: "flip" averages the model's outputs on the image and on its left-right mirror (as
        `fusion.inference.Predictor` does on the host for a single-pass export); "none" runs
        the model once.

    Returns:
      (serve_images(images [B, H, W, 4]), serve_hu(hu [B, H, W, 1])) each returning the dict of
      the module docstring.
    """
    check_tta(tta)
    thresholds_t = tf.constant(thresholds.array.astype(np.float32).reshape(1, len(LABEL_NAMES)))
    mask_threshold = float(thresholds.mask)
    window_list = _window_list(presets)
    size = int(image_size)

    def one_pass(resized: tf.Tensor) -> dict[str, tf.Tensor]:
        """probabilities [B, 6], area_fraction [B] and mask [B, size, size, 1] (the last two
        only for a model with those heads)."""
        out = model(resized, training=False)
        result = {"probabilities": tf.cast(out["class"], tf.float32)}
        if "area" in out:
            result["area_fraction"] = target_to_area(tf.cast(out["area"], tf.float32)[:, 0], xp=tnp)
        if "mask" in out:
            result["mask"] = tf.cast(out["mask"], tf.float32)
        return result

    def run(images: tf.Tensor) -> dict[str, tf.Tensor]:
        in_hw = tf.shape(images)[1:3]
        batch = tf.shape(images)[0]
        resized = tf.image.resize(images, [size, size], method="bilinear")
        result = one_pass(resized)
        if tta == "flip":  # the same average as Predictor's host-side flip
            # Two calls: on 2 CPU cores 1.61x one pass at batch 1, against 1.81x for one call on
            # the image and its mirror stacked (benchmarks/flip_forms.py; docs/benchmarks.md).
            mirrored = one_pass(tf.reverse(resized, axis=[2]))
            if "mask" in mirrored:
                mirrored["mask"] = tf.reverse(mirrored["mask"], axis=[2])
            result = {k: (v + mirrored[k]) / 2.0 for k, v in result.items()}
        result["decisions"] = tf.cast(result["probabilities"] >= thresholds_t, tf.int32)
        if "area_fraction" not in result:
            result["area_fraction"] = tf.fill([batch], float("nan"))
        if "mask" in result:
            mask = tf.image.resize(result["mask"], in_hw, method="bilinear")
            result["mask"] = tf.clip_by_value(mask, 0.0, 1.0)  # [B, H, W, 1]
        else:
            result["mask"] = tf.fill(tf.concat([[batch], in_hw, [1]], 0), float("nan"))
        # NaN (no mask head) compares False: an all-zero mask_uint8, "no bleed found".
        result["mask_uint8"] = tf.cast(result["mask"] >= mask_threshold, tf.uint8)
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
    tta: str = DEFAULT_TTA,
) -> Path:
    """Write the SavedModel to `path` atomically (temporary folder, then rename); `tta` as
    for `make_serving_fns`."""
    serve_images, serve_hu = make_serving_fns(model, image_size, thresholds, presets, tta)
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
        _write_sidecars(tmp, image_size, thresholds, presets, tta)
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
    folder: Path, image_size: int, thresholds: Thresholds, presets: Sequence[windows.Window] | None,
    tta: str,
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
        "signatures": SIGNATURES,
        "outputs": ["probabilities", "decisions", "area_fraction", "mask", "mask_uint8"],
        "mask_threshold": float(thresholds.mask),
        "tta": tta,
    }
    atomic_write_text(folder / "fusion_export.json", json.dumps(info, indent=2) + "\n")
    atomic_write_text(folder / "README.md", _readme(info))


def _readme(info: Mapping[str, Any]) -> str:
    """The export's contract for a person deploying it (same facts as fusion_export.json)."""
    lines = ["# fusion SavedModel", "",
             "Serve the parent folder with TF Serving (`--model_base_path=.../export`); each",
             "numbered folder is one version. Signatures (any H, W; resized in the graph):", ""]
    lines += [f"- `{name}`: {text}" for name, text in SIGNATURES.items()]
    lines += ["", f"Window presets (level, width HU): {info['presets']}",
              f"Outputs: probabilities [B, 6] ({', '.join(info['label_names'])}), decisions "
              f"[B, 6] int32, area_fraction [B], mask [B, H, W, 1] float32, mask_uint8 "
              f"[B, H, W, 1] (mask >= {info['mask_threshold']}; thresholds.json says how it was set).", "",
              TTA_README[info["tta"]], ""]
    return "\n".join(lines)


def export_model(
    model: keras.Model,
    run_dir: str | Path,
    cfg: RunConfig,
    thresholds: Thresholds,
    presets: Sequence[windows.Window] | None = None,
    version: int = DEFAULT_EXPORT_VERSION,
    tta: str = DEFAULT_TTA,
) -> Path:
    """Save ``RUN/model.keras`` and write ``RUN/export/<version>`` (`tta` as for
    `make_serving_fns`). Returns that folder."""
    run_dir = Path(run_dir)
    target = export_dir(run_dir, version)
    check_tta(tta)  # before anything is written
    save_keras(model, run_dir / "model.keras")
    if (run_dir / "export" / "saved_model.pb").is_file():
        # An unversioned export of this run (before versions): TF Serving cannot load it and
        # load_predictor would keep preferring the versioned one, so replace it.
        shutil.rmtree(run_dir / "export")
    path = write_savedmodel(model, target, cfg.model.image_size, thresholds, presets, tta)
    (run_dir / EXPORT_NOTE).unlink(missing_ok=True)  # a run trained without TensorFlow: done now
    return path


def reexport_tta(run_dir: str | Path, given: str | None) -> str:
    """The test-time augmentation a re-export of `run_dir` writes: `given`, else that of the
    run's latest export (one pass for an export from before the choice was recorded), else
    `DEFAULT_TTA`: re-exporting never changes what a run serves unless asked to."""
    if given is not None:
        check_tta(given)
        return given
    latest = latest_version(Path(run_dir) / "export")
    if latest is None:
        return DEFAULT_TTA
    try:
        return tta_of_export(read_json_dict(latest / "fusion_export.json"), latest)
    except ModelLoadError as err:
        raise ExportError(str(err)) from None


def export_dir(run_dir: str | Path, version: int = DEFAULT_EXPORT_VERSION) -> Path:
    """``RUN/export/<version>``; ExportError unless version is a positive integer."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"export version must be a positive integer (TF Serving's version "
                          f"folders are numbers); got {version!r}")
    return Path(run_dir) / "export" / str(version)


def export_run(run_dir: str | Path, shards_dir: str | Path | None = None,
               version: int = DEFAULT_EXPORT_VERSION, tta: str | None = None) -> Path:
    """Re-export a finished run from its files (best.keras, thresholds.json, config.json).

    Args:
      run_dir: the run folder.
      shards_dir: shards whose manifest gives the window presets (default: the standard
        presets of `data_build.windows`).
      version: the servable version folder, ``RUN/export/<version>``.
      tta: test-time augmentation in the signatures, as for `make_serving_fns`; None: what the
        run's latest export runs (`reexport_tta`).

    Raises:
      ExportError: a file of the run is missing or unreadable.
    """
    run_dir = Path(run_dir)
    export_dir(run_dir, version)  # refuse a bad version or tta before loading anything
    tta = reexport_tta(run_dir, tta)
    for name in ("config.json", "thresholds.json"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir / name} is missing: is {run_dir} a finished fusion-train run?")
    model_path = find_checkpoint(run_dir)
    if model_path is None:
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
    model = inference_model(keras.saving.load_model(model_path, compile=False))  # best.keras trains
    return export_model(model, run_dir, cfg, thresholds, presets, version, tta)
