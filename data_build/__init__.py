"""Brain-CT drop -> TFRecord shards. The Python API behind ``fusion-build``, ``fusion-verify``
and ``fusion-synth``::

    import data_build
    report = data_build.build("drop/", "shards/")      # records.build: shards + manifest.json
    data_build.verify("shards/")                       # records.verify: every record re-read
    data_build.write_synthetic_drop("demo/drop", ...)  # a synthetic drop in the real layout

Names are imported on first use, so ``import data_build`` stays light and never imports
TensorFlow (build workers are separate processes that must not pay for it).
"""
from __future__ import annotations

import importlib
from typing import Any

#: Public name -> "module:attribute", loaded on first access (PEP 562).
_API = {
    "build": "data_build.records:build",
    "verify": "data_build.records:verify",
    "write_synthetic_drop": "data_build.synth.writer:write_synthetic_drop",
    "BuildError": "data_build.records:BuildError",
    "ManifestError": "data_build.records:ManifestError",
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
        raise AttributeError(f"module 'data_build' has no attribute {name!r}")
    module, attr = _API[name].split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
