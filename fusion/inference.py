"""Load an exported model and run it on NumPy batches, with optional flip test-time augmentation.

The export contract (docs/design.md, "Run folder"): ``RUN/export/<N>`` is a SavedModel with
``serving_default(images float32 [B, H, W, 4])`` and ``serve_hu(hu float32 [B, H, W, 1])``,
each returning ``probabilities [B, 6]``, ``decisions [B, 6] int32``, ``area_fraction [B]`` and
``mask [B, H, W, 1]`` (probabilities at the input size). `load_predictor` accepts the run
folder, its ``export/`` base folder (highest version) or the SavedModel folder itself; an
unversioned ``RUN/export`` of an older run is still found.

Flip test-time augmentation: an export records in ``fusion_export.json`` whether its
signatures already average a left-right mirrored pass (``"tta": "flip"``, `fusion.export`'s
default) or run one pass (``"none"``, and every export from before the key). `Predictor` runs
what is asked: the signature as it is when it matches, a mirrored second call on the host when
the export runs one pass; a flip export cannot run one pass (`fusion.keras_predictor.open_model`
then loads the run's model.keras instead).

Thresholds (needed to turn TTA-averaged probabilities back into decisions, and by the
evaluation) are looked up in this order: a ``thresholds`` variable on the SavedModel,
``thresholds.json`` inside the SavedModel folder, then in its parent (the run folder). The
file is read by `fusion.thresholds.Thresholds` (one reader for every copy).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from data_build.schema import LABEL_NAMES
from fusion.errors import FusionError
from fusion.targets import MASK_THRESHOLD
from fusion.thresholds import THRESHOLDS_FILE, Thresholds, ThresholdsError

log = logging.getLogger(__name__)

#: Test-time augmentations understood by `Predictor`.
TTA_MODES: tuple[str, ...] = ("none", "flip")
#: What fusion-evaluate and fusion-predict use unless told otherwise. Flip TTA (nnU-Net's
#: default, mirroring) raised held-out Dice in 31 of 40 proxy runs (mean +0.009 on the default
#: preset, +0.027 on plain-unet); macro AUC moved both ways by up to 0.018 (docs/benchmarks.md,
#: "Flip test-time augmentation by default"). It costs a second model pass per slice.
DEFAULT_TTA = "flip"
OUTPUT_KEYS: tuple[str, ...] = ("probabilities", "decisions", "area_fraction", "mask")


class ModelLoadError(FusionError):
    """The model folder is missing or is not a SavedModel with the expected signatures."""


class PredictInputError(FusionError, ValueError):
    """An array handed to the predictor has the wrong shape or values."""


def latest_version(base: Path) -> Path | None:
    """The highest numbered ``base/<N>/`` holding a saved_model.pb (TF Serving's "latest"
    policy), or None."""
    if not base.is_dir():
        return None
    versions = [p for p in base.iterdir()
                if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def find_savedmodel(path: Path) -> Path:
    """The SavedModel folder for a run folder (``RUN/export/<N>``, else an unversioned
    ``RUN/export``), an export base folder (``RUN/export``) or a SavedModel folder."""
    if (path / "saved_model.pb").is_file():
        return path
    for found in (latest_version(path / "export"), latest_version(path)):
        if found is not None:
            return found
    if (path / "export" / "saved_model.pb").is_file():
        return path / "export"  # exported before version folders existed
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist; pass a run folder or its export/")
    raise ModelLoadError(
        f"{path} is neither a SavedModel (no saved_model.pb) nor a run folder with "
        f"export/<version>/; run fusion-train (it writes RUN/export/1) or pass the SavedModel folder"
    )


def _run_dir_of(folder: Path, given: Path) -> Path | None:
    """The run folder of a SavedModel folder: RUN for RUN/export/<N> and RUN/export."""
    if folder.name.isdigit() and folder.parent.name == "export":
        run = folder.parent.parent
        # Given the version folder itself (perhaps copied to a model server): a run only if
        # it looks like one.
        return run if folder != given or (run / "config.json").is_file() else None
    if folder.name == "export" and folder != given:
        return folder.parent
    return folder.parent if (folder.parent / "config.json").is_file() else None


def read_thresholds(candidates: Sequence[Path]) -> tuple[np.ndarray | None, list[str], float]:
    """Thresholds from the first readable ``thresholds.json`` among `candidates`, the
    calibration notes of the first one that has any (an export written before the notes were
    copied into it holds only thresholds; the run folder's has both), and the mask threshold
    of the first readable file (`MASK_THRESHOLD` when none is readable, or the file predates
    mask calibration)."""
    values: np.ndarray | None = None
    notes: list[str] = []
    mask = MASK_THRESHOLD
    for path in candidates:
        if not path.is_file():
            continue
        try:
            found = Thresholds.load(path)
        except ThresholdsError as err:
            log.warning("%s", err)
            continue
        if values is None:
            values, mask = found.array, found.mask
        if not notes:
            notes = list(found.notes)
    return values, notes, mask


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """RUN/config.json as a dict ({} when absent or unreadable)."""
    return read_json_dict(run_dir / "config.json")


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object file as a dict ({} when absent, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_image_size(config: Mapping[str, Any]) -> int | None:
    """``image_size`` anywhere in a (possibly nested) run config, as an int, else None."""
    stack: list[Any] = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if "image_size" in item:
                value = item["image_size"]
                if isinstance(value, (list, tuple)) and value:
                    value = value[0]
                try:
                    return int(value)
                except (TypeError, ValueError):
                    pass
            stack.extend(v for v in item.values() if isinstance(v, Mapping))
    return None


def _resize_stack(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[B, H, W, C] -> [B, size[0], size[1], C] by bilinear resampling (area when shrinking)."""
    import cv2

    b, h, w, c = arr.shape
    if (h, w) == size:
        return arr
    interp = cv2.INTER_AREA if size[0] < h and size[1] < w else cv2.INTER_LINEAR
    out = np.empty((b, size[0], size[1], c), dtype=np.float32)
    for i in range(b):
        # cv2 takes (width, height) and drops a channel axis of 1
        resized = cv2.resize(arr[i], (size[1], size[0]), interpolation=interp)
        out[i] = resized.reshape(size[0], size[1], c)
    return out


@dataclass
class Predictor:
    """A loaded SavedModel with the two serving signatures.

    Attributes:
      path: the SavedModel folder.
      run_dir: the run folder when the model came from one, else None.
      thresholds: [6] decision thresholds in `LABEL_NAMES` order, None when unknown.
      input_size: (H, W) fixed by the signature, None when it accepts any size.
      config: RUN/config.json contents ({} when unknown).
      resize_to: (H, W) inputs are resampled to before the model runs: the signature's fixed
        size; None (inputs go in as they are) when the signature takes any size, as
        `fusion.export` writes it (it resizes to the training size in the graph, with the
        same bilinear resampling as the reader). Outputs come back at the caller's size.
      export_info: ``fusion_export.json`` of the SavedModel ({} when absent).
      threshold_notes: what the run noted when it calibrated the thresholds (e.g. a type
        with few validation positives); [] when none.
      mask_threshold: mask probability at which a pixel is bleed (``thresholds.json``'s
        calibrated one; `MASK_THRESHOLD` for runs from before mask calibration).
      graph_tta: the test-time augmentation the signatures run themselves (``fusion_export.json``'s
        ``tta``; "none" for exports from before it was recorded, and for `KerasPredictor`).
    """

    path: Path
    run_dir: Path | None
    thresholds: np.ndarray | None
    input_size: tuple[int, int] | None
    config: dict[str, Any] = field(default_factory=dict)
    resize_to: tuple[int, int] | None = None
    export_info: dict[str, Any] = field(default_factory=dict)
    threshold_notes: list[str] = field(default_factory=list)
    mask_threshold: float = MASK_THRESHOLD
    graph_tta: str = "none"
    _loaded: Any = None
    _signatures: dict[str, Any] = field(default_factory=dict)

    @property
    def label_names(self) -> tuple[str, ...]:
        return LABEL_NAMES

    @property
    def image_size(self) -> int | None:
        """Square training size: the signature's fixed size, else fusion_export.json's, else
        the run config's image_size (None when none says)."""
        if self.input_size is not None:
            return self.input_size[0]
        return find_image_size(self.export_info) or find_image_size(self.config)

    @property
    def exported_tta(self) -> str:
        """The export's test-time augmentation (``fusion_export.json``), what `predict` runs
        unless told otherwise: "none" when no export says."""
        return tta_of_export(self.export_info)

    # -- running ------------------------------------------------------------------------------

    def _run(self, signature: str, key: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        h, w = batch.shape[1:3]
        x = batch
        target = self.input_size or self.resize_to
        if target is not None and target != (h, w):
            x = _resize_stack(batch, target)
        out = self._signatures[signature](**{key: tf.constant(x, dtype=tf.float32)})
        missing = [k for k in OUTPUT_KEYS if k not in out]
        if missing:
            raise ModelLoadError(
                f"signature {signature} of {self.path} lacks outputs {missing}; re-export the "
                f"model with fusion.export"
            )
        res = {k: np.asarray(out[k].numpy()) for k in OUTPUT_KEYS}
        res["probabilities"] = res["probabilities"].astype(np.float32).reshape(len(batch), -1)
        res["decisions"] = res["decisions"].astype(np.int32).reshape(len(batch), -1)
        res["area_fraction"] = res["area_fraction"].astype(np.float32).reshape(len(batch))
        mask = res["mask"].astype(np.float32)
        if mask.ndim == 3:
            mask = mask[..., None]
        if mask.shape[1:3] != (h, w):
            mask = np.clip(_resize_stack(mask, (h, w)), 0.0, 1.0)
        res["mask"] = mask
        return res

    def _run_tta(
        self, signature: str, key: str, batch: np.ndarray, tta: str
    ) -> dict[str, np.ndarray]:
        if tta == self.graph_tta:
            return self._run(signature, key, batch)
        if self.graph_tta != "none":
            raise PredictInputError(
                f"{self.path} runs tta={self.graph_tta} in its graph and cannot run tta={tta}: load "
                f"the run's model.keras (fusion.keras_predictor.open_model(RUN, backend, '{tta}'))")
        base = self._run(signature, key, batch)
        # Horizontal flip (left-right; the head's midline symmetry makes it label-preserving).
        flipped = self._run(signature, key, batch[:, :, ::-1, :].copy())
        out = {
            "probabilities": (base["probabilities"] + flipped["probabilities"]) / 2.0,
            "area_fraction": (base["area_fraction"] + flipped["area_fraction"]) / 2.0,
            "mask": (base["mask"] + flipped["mask"][:, :, ::-1, :]) / 2.0,
        }
        if self.thresholds is not None:
            out["decisions"] = (out["probabilities"] >= self.thresholds[None, :]).astype(np.int32)
        else:
            # Without thresholds the averaged probabilities cannot be re-cut: keep the
            # un-augmented decisions (documented in the CLI help).
            out["decisions"] = base["decisions"]
        return out

    def _batched(
        self, signature: str, key: str, arr: np.ndarray, batch_size: int, tta: str | None
    ) -> dict[str, np.ndarray]:
        tta = self.exported_tta if tta is None else tta
        if tta not in TTA_MODES:
            raise PredictInputError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        if batch_size < 1:
            raise PredictInputError(f"batch_size must be >= 1, got {batch_size}")
        parts = [
            self._run_tta(signature, key, arr[i : i + batch_size], tta)
            for i in range(0, len(arr), batch_size)
        ]
        if not parts:
            h, w = arr.shape[1:3]
            return {
                "probabilities": np.zeros((0, len(LABEL_NAMES)), np.float32),
                "decisions": np.zeros((0, len(LABEL_NAMES)), np.int32),
                "area_fraction": np.zeros((0,), np.float32),
                "mask": np.zeros((0, h, w, 1), np.float32),
            }
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in OUTPUT_KEYS}

    def predict(
        self, images: np.ndarray, batch_size: int = 8, tta: str | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``serving_default`` on windowed images.

        Args:
          images: [N, H, W, 4] float32 in [0, 1], channels in `windows.WINDOW_NAMES` order.
          batch_size: slices per model call.
          tta: "none" or "flip" (average with the horizontally flipped image); None: the
            export's (`exported_tta`), what its SavedModel signatures return.

        Returns:
          ``probabilities [N, 6] float32, decisions [N, 6] int32, area_fraction [N] float32
          (bleed pixels / all pixels), mask [N, H, W, 1] float32 probabilities`` at the
          input size.
        """
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[-1] != 4:
            raise PredictInputError(f"images must be [N, H, W, 4]; got shape {arr.shape}")
        if arr.size and (np.nanmin(arr) < -1e-3 or np.nanmax(arr) > 1 + 1e-3):
            raise PredictInputError(
                "images must be windowed to [0, 1]; got values in "
                f"[{float(arr.min()):.3g}, {float(arr.max()):.3g}] (HU? use predict_hu)"
            )
        return self._batched("serving_default", "images", arr, batch_size, tta)

    def predict_hu(
        self, hu: np.ndarray, batch_size: int = 8, tta: str | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``serve_hu`` on Hounsfield units (the model windows them itself).

        Args:
          hu: [N, H, W] or [N, H, W, 1] float32 HU.
          batch_size, tta: as for `predict`.

        Returns:
          As `predict`.
        """
        arr = np.asarray(hu, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or arr.shape[-1] != 1:
            raise PredictInputError(f"hu must be [N, H, W] or [N, H, W, 1]; got {arr.shape}")
        return self._batched("serve_hu", "hu", arr, batch_size, tta)


def tta_of_export(export_info: Mapping[str, Any], folder: Path | None = None) -> str:
    """``fusion_export.json``'s test-time augmentation (of the export in `folder`, named in the
    error); "none" for exports from before it was recorded (their signatures run one pass)."""
    tta = export_info.get("tta", "none")
    if tta not in TTA_MODES:
        where = folder / "fusion_export.json" if folder is not None else "fusion_export.json"
        raise ModelLoadError(f"{where} names tta {tta!r}, which this version of fusion does not know "
                             f"({', '.join(TTA_MODES)}); upgrade fusion or re-export the run")
    return str(tta)


def _signature_input(fn: Any) -> tuple[str, tuple[int | None, ...]]:
    _, kwargs = fn.structured_input_signature
    if len(kwargs) != 1:
        raise ModelLoadError(f"expected one input per signature, got {sorted(kwargs)}")
    (name, spec), = kwargs.items()
    return name, tuple(spec.shape.as_list())


def load_predictor(path: str | os.PathLike[str]) -> Predictor:
    """Load a run folder (uses RUN/export) or a SavedModel folder.

    Raises:
      ModelLoadError: the folder is missing, not a SavedModel, or lacks a signature.
    """
    import tensorflow as tf

    folder = find_savedmodel(Path(path))
    run_dir = _run_dir_of(folder, Path(path))
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as err:  # TF raises many types for a broken SavedModel
        raise ModelLoadError(f"could not load the SavedModel in {folder}: {err}") from err
    signatures = dict(loaded.signatures)
    for name, key in (("serving_default", "images"), ("serve_hu", "hu")):
        if name not in signatures:
            raise ModelLoadError(
                f"{folder} has no {name!r} signature (found {sorted(signatures)}); export the "
                f"model with fusion.export"
            )
        got, _ = _signature_input(signatures[name])
        if got != key:
            raise ModelLoadError(f"signature {name} takes {got!r}, expected {key!r}")
    _, shape = _signature_input(signatures["serving_default"])
    input_size = None
    if len(shape) == 4 and shape[1] is not None and shape[2] is not None:
        input_size = (int(shape[1]), int(shape[2]))

    thresholds = None
    variable = getattr(loaded, "thresholds", None)
    if variable is not None and hasattr(variable, "numpy"):
        values = np.asarray(variable.numpy(), dtype=np.float64).reshape(-1)
        if values.size == len(LABEL_NAMES):
            thresholds = values
    candidates = tuple(dict.fromkeys(  # the export's copy first, then the run folder's
        (folder / THRESHOLDS_FILE, folder.parent / THRESHOLDS_FILE)
        + ((run_dir / THRESHOLDS_FILE,) if run_dir is not None else ())))
    from_files, notes, mask_threshold = read_thresholds(candidates)
    if thresholds is None:
        thresholds = from_files
    config = read_run_config(run_dir) if run_dir is not None else {}
    export_info = read_json_dict(folder / "fusion_export.json")
    graph_tta = tta_of_export(export_info, folder)
    return Predictor(
        path=folder,
        run_dir=run_dir,
        thresholds=thresholds,
        input_size=input_size,
        config=config,
        resize_to=input_size,
        export_info=export_info,
        threshold_notes=notes,
        mask_threshold=mask_threshold,
        graph_tta=graph_tta,
        _loaded=loaded,
        _signatures=signatures,
    )
