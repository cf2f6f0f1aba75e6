"""The embedded default: synthetic head-CT drops in exactly the real drop's layout.

Not part of the builder. It is what `make demo` and the test fixtures run on, so every command
works on a fresh machine without the private data.

- `phantom.py`: head phantoms in Hounsfield units with each hemorrhage type.
- `writer.py`: a whole drop on disk (renders, DICOMs, label table, segmentation CSVs, quirks),
  `fusion-synth`.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SynthError", "SynthSummary", "write_synthetic_drop"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the CLI can read `difficulty` without importing OpenCV and pydicom.
    if name in __all__:
        from data_build.synth import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
