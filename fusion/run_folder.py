"""The run folder's lifecycle: create it, refuse to clobber it, or reopen it to resume.

``RUN/config.json`` (the typed config) is written first and reproduces the run; the other files
are listed in docs/design.md ("Run folder").
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from data_build import windows
from data_build.files import atomic_write_text, ordinary_mode
from fusion.config import RunConfig
from fusion.errors import TrainError

if TYPE_CHECKING:
    import keras

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
#: Written instead of RUN/export by a run on a backend without TensorFlow.
EXPORT_NOTE = "EXPORT_LATER.txt"
#: The shards' window presets, written with EXPORT_NOTE (an export carries its own).
WINDOWS_FILE = "windows.json"


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> RunConfig:
    """Create or reuse RUN. Returns the config to train with (RUN/config.json on resume).

    Raises:
      TrainError: RUN holds a run and neither `resume` nor `overwrite` was given; `resume`
        without a RUN/config.json.
    """
    config_path = run_dir / CONFIG_FILE
    if resume:
        if not config_path.is_file():
            raise TrainError(f"cannot resume: {config_path} does not exist (start the run without --resume)")
        if (run_dir / METRICS_FILE).is_file() and not (run_dir / "backup").exists():
            raise TrainError(
                f"{run_dir} holds a finished run: nothing to resume (use --overwrite to train "
                f"again, or --export-only to re-export it)"
            )
        return RunConfig.load(config_path)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TrainError(
                f"run folder {run_dir} is not empty; pass --resume to continue it or --overwrite "
                f"to start again"
            )
        if not config_path.is_file():
            raise TrainError(f"refusing to overwrite {run_dir}: it is not a run folder (no config.json)")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(config_path)
    return cfg


def find_checkpoint(run_dir: Path) -> Path | None:
    """A finished run's weights: ``RUN/best.keras``, else ``RUN/model.keras``; None if neither."""
    for name in ("best.keras", "model.keras"):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Write ``RUN/metrics.json`` atomically (the shape of `fusion.scoring`). Returns its path."""
    path = Path(run_dir) / METRICS_FILE
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    return path


def save_keras(model: keras.Model, path: Path) -> None:
    """model.save to a temporary name in the same folder, then rename (any backend)."""
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


def export_later_note(run_dir: Path, shards_dir: Path, backend: str, export_tta: str = "flip") -> str:
    """What RUN/EXPORT_LATER.txt says: how to write the SavedModel on a machine with TensorFlow
    (with the test-time augmentation the run was asked to export, `fusion.export`)."""
    return (
        f"This run trained on the {backend} backend, without TensorFlow, so it has no SavedModel "
        f"(RUN/export).\n{run_dir / 'model.keras'} holds the trained model (the best epoch's weights).\n"
        "To write the SavedModel (TF Serving, its two signatures), run on a machine with "
        "TensorFlow:\n\n"
        f"    fusion-train {shards_dir} --out {run_dir} --export-only --export-tta {export_tta}\n"
    )


def window_table(presets: Sequence[windows.Window]) -> dict[str, Any]:
    """``{"presets": {name: [level, width]}}`` in `WINDOW_NAMES` order: the shape of the
    ``presets`` entry of an export's ``fusion_export.json``, so one reader serves both."""
    return {"presets": {n: [p.level, p.width] for n, p in zip(windows.WINDOW_NAMES, presets, strict=True)}}


def write_windows(run_dir: Path, presets: Sequence[windows.Window]) -> Path:
    """Write RUN/windows.json: the shards' window presets, which `fusion.keras_predictor`
    windows HU inputs with when the run has no export (or a .keras file is run instead)."""
    path = Path(run_dir) / WINDOWS_FILE
    atomic_write_text(path, json.dumps(window_table(presets), indent=2) + "\n")
    return path


def save_without_export(model: keras.Model, run_dir: Path, shards_dir: Path, backend: str,
                        export_tta: str = "flip") -> str:
    """Save RUN/model.keras and write RUN/EXPORT_LATER.txt. Returns the note's text."""
    save_keras(model, run_dir / "model.keras")
    note = export_later_note(run_dir, shards_dir, backend, export_tta)
    atomic_write_text(run_dir / EXPORT_NOTE, note)
    return note
