"""Run a Keras model file (``RUN/model.keras``) the way `fusion.inference` runs the SavedModel,
on any Keras backend (TensorFlow, JAX, PyTorch).

A run trained on JAX or PyTorch has no SavedModel (``RUN/EXPORT_LATER.txt``), and a machine
without TensorFlow cannot load one; both still have ``RUN/model.keras``. `KerasPredictor` is a
`fusion.inference.Predictor` whose model call is the Keras model instead of a signature, with
the serving functions' contract (`fusion.export.make_serving_fns`) rebuilt around it:

- the input is resized to the run's training size, bilinear without antialiasing (what
  ``tf.image.resize(..., "bilinear")`` does in the export's graph);
- ``serve_hu`` inputs are windowed with `data_build.windows.apply_windows` and the presets of
  the run's export (``export/<N>/fusion_export.json``) when it has one, else those a run
  trained without TensorFlow wrote to ``RUN/windows.json``, else the standard ones (a
  ``.keras`` file outside its run folder);
- probabilities in float32, decisions at the run's calibrated thresholds (``thresholds.json``
  next to the model; 0.5 without it, as `fusion.scoring.ModelPredictor` does), the area
  output turned into a fraction (`fusion.targets.target_to_area`), the mask resized back to
  the input size and clipped to [0, 1]; NaN where the model has no such head.

Batching, input checks and flip TTA are `Predictor`'s (on the host: the Keras model is one
pass, whatever the run's export does in its graph). Import this module only after the
backend is selected (`fusion.backend.select_backend`): loading a model imports keras.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from data_build import windows
from fusion.inference import (
    ModelLoadError,
    Predictor,
    find_savedmodel,
    latest_version,
    load_predictor,
    read_json_dict,
    read_run_config,
    read_thresholds,
    tta_of_export,
)
from fusion.run_folder import WINDOWS_FILE
from fusion.targets import target_to_area
from fusion.thresholds import THRESHOLDS_FILE

log = logging.getLogger(__name__)

#: Model files looked for in a run folder, in order: the exported model (best epoch's
#: weights), then the best checkpoint.
MODEL_FILES: tuple[str, ...] = ("model.keras", "best.keras")


def find_keras_model(path: Path) -> Path | None:
    """A ``.keras`` file given, or the first of `MODEL_FILES` in a folder; else None."""
    if path.is_file() and path.suffix == ".keras":
        return path
    if path.is_dir():
        for name in MODEL_FILES:
            if (path / name).is_file():
                return path / name
    return None


def is_savedmodel(path: Path) -> bool:
    """True for a SavedModel folder, an export base folder (``RUN/export``) or ``RUN/export/<N>``."""
    return (path / "saved_model.pb").is_file() or latest_version(path) is not None


def presets_from_export(info: Mapping[str, Any]) -> tuple[windows.Window, ...] | None:
    """Window presets of a ``fusion_export.json`` or ``RUN/windows.json``
    (``{"presets": {name: [level, width]}}``), `WINDOW_NAMES` order; None when it names none
    or they are malformed."""
    table = info.get("presets")
    try:
        return tuple(windows.Window(float(table[n][0]), float(table[n][1])) for n in windows.WINDOW_NAMES)
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def run_presets(model_path: Path, export_info: Mapping[str, Any]) -> tuple[windows.Window, ...]:
    """The presets HU inputs are windowed with: the export's, else ``RUN/windows.json``, else
    the standard ones, with a warning (shards built with other presets would be mis-windowed)."""
    for found in (presets_from_export(export_info), presets_from_export(read_json_dict(
            model_path.parent / WINDOWS_FILE))):
        if found is not None:
            return found
    log.warning("no window presets found beside %s (no export, no %s): DICOM/HU inputs are windowed "
                "with the standard presets; if the shards were built with --window, keep the model in "
                "its run folder", model_path, WINDOWS_FILE)
    return tuple(windows.PRESETS[n] for n in windows.WINDOW_NAMES)


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[B, H, W, C] float32 -> [B, size[0], size[1], C], bilinear without antialiasing (equal to
    ``tf.image.resize(..., "bilinear")`` within float32 rounding), on the backend's device."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    from keras import ops

    out = ops.image.resize(images, size, interpolation="bilinear", antialias=False)
    return np.asarray(ops.convert_to_numpy(out), np.float32)


@dataclass
class KerasPredictor(Predictor):
    """`Predictor` over an in-memory Keras model loaded from a ``.keras`` file.

    Attributes (besides `Predictor`'s; ``path`` is the ``.keras`` file):
      presets: window presets ``serve_hu`` inputs are windowed with, `WINDOW_NAMES` order.
    """

    presets: tuple[windows.Window, ...] = ()
    _model: Any = None

    def _run(self, signature: str, key: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The export's ``serving_default`` / ``serve_hu`` (`fusion.export.make_serving_fns`)."""
        del key  # the signature says what the batch holds
        x = np.asarray(batch, np.float32)
        if signature == "serve_hu":
            x = np.asarray(windows.apply_windows(x, presets=self.presets, xp=np), np.float32)
        n, h, w = x.shape[:3]
        size = self.image_size
        out = self._model.predict_on_batch(resize(x, (size, size)) if size else x)
        probabilities = np.asarray(out["class"], np.float32).reshape(n, -1)
        thresholds = np.float32(0.5) if self.thresholds is None else self.thresholds.astype(np.float32)
        area = (target_to_area(np.asarray(out["area"], np.float32)[:, 0]).astype(np.float32)
                if "area" in out else np.full(n, np.nan, np.float32))
        if "mask" in out:
            mask = np.clip(resize(np.asarray(out["mask"], np.float32), (h, w)), 0.0, 1.0)
        else:
            mask = np.full((n, h, w, 1), np.nan, np.float32)
        return {"probabilities": probabilities, "area_fraction": area, "mask": mask,
                "decisions": (probabilities >= thresholds).astype(np.int32)}


def _load_keras(path: Path) -> Any:
    """keras.saving.load_model of `path` (no optimizer), custom layers registered first."""
    import keras

    import fusion.layers  # noqa: F401  (registers the custom layers with keras.saving)

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as err:  # keras raises many types for a damaged or foreign file
        raise ModelLoadError(f"could not load the Keras model {path}: {err}") from err
    from fusion.model import inference_model

    return inference_model(model)  # a run's best.keras keeps deep supervision's training heads


def load_keras_predictor(path: str | os.PathLike[str]) -> KerasPredictor:
    """Load a ``.keras`` file, or the one of a run folder (`MODEL_FILES`), with the run's
    thresholds, config and (when exported) window presets from the file's folder.

    Raises:
      ModelLoadError: no model file there, or it does not load.
    """
    given = Path(path)
    model_path = find_keras_model(given)
    if model_path is None:
        raise ModelLoadError(f"{given} is neither a .keras file nor a run folder with "
                             f"{' or '.join(MODEL_FILES)}; pass RUN or RUN/model.keras")
    folder = model_path.parent
    run_dir = folder if (folder / "config.json").is_file() else None
    export = latest_version(folder / "export")
    export_info = read_json_dict(export / "fusion_export.json") if export is not None else {}
    if export is not None:
        tta_of_export(export_info, export)  # an unknown mode is refused now, not at predict()
    thresholds, notes, mask_threshold = read_thresholds((folder / THRESHOLDS_FILE,))
    predictor = KerasPredictor(
        path=model_path, run_dir=run_dir, thresholds=thresholds, input_size=None,
        config=read_run_config(folder), export_info=export_info, threshold_notes=notes,
        mask_threshold=mask_threshold,
        presets=run_presets(model_path, export_info),
        _model=_load_keras(model_path),
    )
    if predictor.image_size is None:  # the model itself accepts any size
        log.warning("%s has no config.json beside it naming the training size: slices go to the "
                    "model at their own size (keep model.keras in its run folder)", model_path)
    return predictor


def savedmodel_refusal(path: Path, backend: str, model_file: Path | None) -> str:
    """The one-line error for a SavedModel given on a backend that cannot load one."""
    instead = f"pass {model_file}" if model_file is not None else "pass the run folder's model.keras"
    return (f"{path} is a TensorFlow SavedModel, which the {backend} backend cannot load: {instead}, "
            f"or install TensorFlow and use --backend tensorflow")


def open_model(path: str | os.PathLike[str], backend: str, tta: str | None = None) -> Predictor:
    """The predictor for MODEL on the running Keras `backend`, able to run `tta` (None: the
    export's own).

    On TensorFlow: a run folder's SavedModel (``RUN/export/<N>``) or a SavedModel folder, as
    before; a ``.keras`` file, or a run folder with model.keras but no export (trained on JAX
    or PyTorch), through `KerasPredictor`; a run folder whose export averages a mirrored pass
    in its graph when `tta` is "none" (one pass), through `KerasPredictor` too. On other
    backends: a ``.keras`` file or a run folder, always through `KerasPredictor`; a SavedModel
    folder is refused.

    Raises:
      ModelLoadError: nothing loadable at `path` (one line saying what to pass instead).
    """
    given = Path(path)
    if not given.exists():
        raise ModelLoadError(f"model path {given} does not exist; pass a run folder or its model.keras")
    keras_file = find_keras_model(given)
    if backend == "tensorflow":
        has_export = is_savedmodel(given) or latest_version(given / "export") is not None or (
            given / "export" / "saved_model.pb").is_file()
        if keras_file is not None and (given.is_file() or not has_export):
            return load_keras_predictor(keras_file)
        found = find_savedmodel(given)
        graph_tta = tta_of_export(read_json_dict(found / "fusion_export.json"), found)
        if tta is None or tta == graph_tta or graph_tta == "none":
            return load_predictor(given)
        run = _run_of_export(found)
        model_file = keras_file or (find_keras_model(run) if run is not None else None)
        if model_file is not None:
            return load_keras_predictor(model_file)
        raise ModelLoadError(
            f"{found} runs --tta {graph_tta} in its graph and has no model.keras or best.keras beside it "
            f"to run --tta {tta}: pass a run folder that holds one, or export one pass (fusion-train "
            f"SHARDS --out RUN --export-only --export-tta {tta} --export-version N; a new N leaves the "
            f"served version as it is)")
    if keras_file is None and is_savedmodel(given):
        run = _run_of_export(given)
        raise ModelLoadError(savedmodel_refusal(given, backend, find_keras_model(run) if run else None))
    return load_keras_predictor(given)


def _run_of_export(folder: Path) -> Path | None:
    """The run folder above ``RUN/export`` or ``RUN/export/<N>`` (None when there is none)."""
    for candidate in (folder.parent, folder.parent.parent):
        if (candidate / "config.json").is_file():
            return candidate
    return None

