"""Train, export, evaluate and run the multi-task hemorrhage model. The Python API behind
``fusion-train``, ``fusion-evaluate`` and ``fusion-predict``::

    import fusion
    fusion.train_model("shards/", "runs/a", fusion.preset("fusion"))       # fusion-train
    predictor = fusion.load_predictor("runs/a")        # finds runs/a/export/<version>/
    fusion.run_predictions(predictor, ["scans/"], Path("pred"), mask_formats=("nifti",))
    fusion.evaluate_model(predictor, batches, Path("report"))              # fusion-evaluate

The functions carry a suffix because ``fusion.train``, ``fusion.evaluate`` and
``fusion.predict`` are the modules that define them: a function of the same name would
shadow the module (``from fusion import train`` would then give the function). Names are
imported on first use (PEP 562), so ``import fusion`` does not load TensorFlow until a
function that needs it is called.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Public name -> "module:attribute", loaded on first access.
_API = {
    "train_model": "fusion.train:train",
    "export_run": "fusion.export:export_run",
    "evaluate_model": "fusion.evaluate:evaluate",
    "load_predictor": "fusion.inference:load_predictor",
    "run_predictions": "fusion.predict:run_predictions",
    "RunConfig": "fusion.config:RunConfig",
    "preset": "fusion.config:preset",
    "Predictor": "fusion.inference:Predictor",
}

__all__ = ["__version__", *_API]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fusion")
    except metadata.PackageNotFoundError:  # a source tree that was never pip-installed
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'fusion' has no attribute {name!r}")
    module, attr = _API[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
