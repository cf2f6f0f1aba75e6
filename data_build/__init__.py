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

from data_build.lazy_api import lazy_exports, package_version

#: Public name -> "module:attribute", loaded on first access (PEP 562).
_API = {
    "build": "data_build.records:build",
    "verify": "data_build.records:verify",
    "write_synthetic_drop": "data_build.synth.writer:write_synthetic_drop",
    "BuildError": "data_build.records:BuildError",
    "ManifestError": "data_build.manifest:ManifestError",
}

__all__ = ["__version__", *_API]


__version__ = package_version()
__getattr__, __dir__ = lazy_exports("data_build", _API, globals())
