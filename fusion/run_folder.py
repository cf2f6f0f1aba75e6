"""The run folder's lifecycle: create it, refuse to clobber it, or reopen it to resume.

``RUN/config.json`` (the typed config) is written first and reproduces the run; the other files
are listed in docs/design.md ("Run folder").
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from data_build.files import atomic_write_text
from fusion.config import RunConfig
from fusion.errors import TrainError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


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


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Write ``RUN/metrics.json`` atomically (the shape of `fusion.scoring`). Returns its path."""
    path = Path(run_dir) / METRICS_FILE
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    return path
