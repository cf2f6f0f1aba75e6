"""``thresholds.json``: the per-type decision thresholds calibrated on validation, typed.

One writer (`Thresholds.save`) and one reader (`Thresholds.load`) for the run folder's file and
the export's copy. A slice is positive for a type when its probability >= the type's threshold.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from data_build.files import atomic_write_text
from data_build.schema import LABEL_NAMES
from fusion.errors import FusionError

THRESHOLDS_FILE = "thresholds.json"
RULE = "max F1 per type; a slice is positive when probability >= threshold"


class ThresholdsError(FusionError, ValueError):
    """A thresholds.json that is missing, unreadable or lacks a label."""


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds in `LABEL_NAMES` order, and how they were set.

    Attributes:
      values: one threshold per label, `LABEL_NAMES` order.
      notes: what calibration noted (e.g. a type with few validation positives).
      calibrated_on: the split they were calibrated on.
      rule: how each was chosen.
    """

    values: tuple[float, ...]
    notes: tuple[str, ...] = ()
    calibrated_on: str = "val"
    rule: str = RULE
    names: tuple[str, ...] = field(default=LABEL_NAMES)

    @classmethod
    def from_array(cls, values: Sequence[float], notes: Sequence[str] = ()) -> Thresholds:
        return cls(tuple(float(v) for v in values), tuple(str(n) for n in notes))

    @property
    def array(self) -> np.ndarray:
        """[6] float64 in `LABEL_NAMES` order."""
        return np.asarray(self.values, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": {name: float(t) for name, t in zip(self.names, self.values)},
            "names": list(self.names),
            "calibrated_on": self.calibrated_on,
            "rule": self.rule,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = THRESHOLDS_FILE) -> Thresholds:
        """Parse the JSON object `to_dict` writes (exports of earlier versions held only
        ``{"thresholds": {name: t}}``; the other keys then take their defaults).

        Raises:
          ThresholdsError: not an object, or a label without a numeric threshold.
        """
        table = data.get("thresholds") if isinstance(data, Mapping) else None
        if not isinstance(table, Mapping):
            raise ThresholdsError(f"{where} has no 'thresholds' object; re-run fusion-train --export-only")
        missing = [n for n in LABEL_NAMES if not isinstance(table.get(n), (int, float))]
        if missing:
            raise ThresholdsError(f"{where} has no numeric threshold for {', '.join(missing)}")
        return cls(
            values=tuple(float(table[n]) for n in LABEL_NAMES),
            notes=tuple(str(n) for n in data.get("notes", []) if isinstance(data.get("notes"), list)),
            calibrated_on=str(data.get("calibrated_on", "val")),
            rule=str(data.get("rule", RULE)),
        )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/thresholds.json`` atomically. Returns its path."""
        path = Path(folder) / THRESHOLDS_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder_or_file: str | os.PathLike[str]) -> Thresholds:
        """Read ``thresholds.json`` (a folder holding it, or the file).

        Raises:
          ThresholdsError: absent, unreadable or malformed.
        """
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / THRESHOLDS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ThresholdsError(f"cannot read {path}: {err}") from None
        return cls.from_dict(data, str(path))
