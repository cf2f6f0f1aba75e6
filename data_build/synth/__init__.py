"""The embedded default: synthetic head-CT drops in exactly the real drop's layout.

Not part of the builder. It is what `make demo` and the test fixtures run on, so every command
works on a fresh machine without the private data.

- `phantom.py`: head phantoms in Hounsfield units with each hemorrhage type.
- `writer.py`: a whole drop on disk (renders, DICOMs, label table, segmentation CSVs, quirks),
  `fusion-synth`.
"""
from data_build.synth.writer import SynthError, SynthSummary, write_synthetic_drop

__all__ = ["SynthError", "SynthSummary", "write_synthetic_drop"]
