"""``thresholds.json``: the per-type decision thresholds calibrated on validation, typed.

One writer (`Thresholds.save`) and one reader (`Thresholds.load`) for the run folder's file and
the export's copy. A slice is positive for a type when its probability >= the type's threshold;
a pixel is bleed when its mask probability >= the mask threshold (calibrated on the same split:
the grid threshold with the best mean Dice, `fusion.metrics.calibrate_mask_threshold`; a file
written before it existed reads as 0.5, the fixed threshold of those runs).
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
from fusion.targets import MASK_THRESHOLD

THRESHOLDS_FILE = "thresholds.json"
RULE = "max F1 per type; a slice is positive when probability >= threshold"
MASK_RULE = ("best mean per-slice Dice over thresholds 0.30-0.90 that leave no more bleeding "
             "slices empty than 0.5 (ties within 0.005: the one nearest 0.5); a pixel is bleed "
             "when mask probability >= mask_threshold")


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
      mask: the mask threshold (`MASK_THRESHOLD` when not calibrated).
      mask_curve: (threshold, mean validation Dice) pairs it was chosen from; () when none.
      mask_rule: how the mask threshold was chosen (a file keeps the rule of the code that
        wrote it, through any re-save).
    """

    values: tuple[float, ...]
    notes: tuple[str, ...] = ()
    calibrated_on: str = "val"
    rule: str = RULE
    names: tuple[str, ...] = field(default=LABEL_NAMES)
    mask: float = MASK_THRESHOLD
    mask_curve: tuple[tuple[float, float], ...] = ()
    mask_rule: str = MASK_RULE

    def __post_init__(self) -> None:
        mask = self.mask
        if isinstance(mask, bool) or not isinstance(mask, (int, float)) or not 0.0 < mask < 1.0:
            raise ThresholdsError(f"mask_threshold must be a number in (0, 1), got {mask!r}")
        object.__setattr__(self, "mask", float(mask))

    @classmethod
    def from_array(
        cls, values: Sequence[float], notes: Sequence[str] = (), mask: float = MASK_THRESHOLD,
        mask_curve: Mapping[str, float] | None = None,
    ) -> Thresholds:
        curve = tuple((float(t), float(d)) for t, d in (mask_curve or {}).items())
        return cls(tuple(float(v) for v in values), tuple(str(n) for n in notes), mask=float(mask),
                   mask_curve=curve)

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
            "mask_threshold": float(self.mask),
            "mask_rule": self.mask_rule if self.mask_curve else "fixed at 0.5 (not calibrated)",
            "mask_dice_by_threshold": {f"{t:.2f}": d for t, d in self.mask_curve},
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
        mask = data.get("mask_threshold", MASK_THRESHOLD)  # absent: a run from before calibration
        try:
            return cls(
                values=tuple(float(table[n]) for n in LABEL_NAMES),
                notes=tuple(str(n) for n in data.get("notes", []) if isinstance(data.get("notes"), list)),
                calibrated_on=str(data.get("calibrated_on", "val")),
                rule=str(data.get("rule", RULE)),
                mask=mask,
                mask_curve=_curve(data.get("mask_dice_by_threshold")),
                mask_rule=str(data.get("mask_rule", MASK_RULE)),
            )
        except ThresholdsError as err:
            raise ThresholdsError(f"{where}: {err}") from None

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


def _curve(curve: Any) -> tuple[tuple[float, float], ...]:
    """``mask_dice_by_threshold`` -> (threshold, Dice) pairs; absent (older files) -> ()."""
    if curve is None:
        return ()
    try:
        return tuple((float(t), float(d)) for t, d in curve.items())
    except (AttributeError, TypeError, ValueError):
        raise ThresholdsError("mask_dice_by_threshold must map thresholds to numbers") from None
