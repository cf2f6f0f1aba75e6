"""Phantom settings of `fusion-synth --difficulty` (no heavy imports: the CLI reads them).

- "easy": the original phantom (bright, mid-sized bleeds on a clean, centred head), kept byte
  for byte for a seed, for fast tests and the demo's reference figures (`phantom.py`);
- "real": calibrated to real head CT (issue 10; `realistic.py`, docs/data.md).
"""
from __future__ import annotations

DIFFICULTIES: tuple[str, ...] = ("easy", "real")
#: What `fusion-synth` writes unless told otherwise.
DEFAULT_DIFFICULTY = "real"
