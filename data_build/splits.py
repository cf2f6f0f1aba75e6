"""Deterministic train/val/test assignment by group (patient, else study, else slice).

A group's split depends only on ``sha256(salt + group)``: the same on every machine, in every
run, whatever the order or number of cases, and a group (so a patient) never lands in two
splits. Adding slices to a drop never moves existing groups.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_SALT = "fusion-v1"


class SplitError(ValueError):
    """Split fractions that are not three non-negative numbers summing to 1."""


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, val, test) fractions.

    Raises:
      SplitError: not three finite numbers >= 0 that sum to 1 (within 1e-6).
    """
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise SplitError(f"need 3 split fractions (train, val, test), got {len(values)}: {values}")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise SplitError(f"split fractions must be finite and >= 0, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise SplitError(f"split fractions must sum to 1, got {values} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` (the CLI form) into validated fractions."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise SplitError(
            f"split fractions {text!r} are not numbers; expected TRAIN,VAL,TEST e.g. 0.8,0.1,0.1"
        ) from None
    return check_fractions(values)


def unit_hash(group: str, salt: str = DEFAULT_SALT) -> float:
    """A uniform number in [0, 1) from sha256(salt + group) (first 8 bytes)."""
    digest = hashlib.sha256((salt + group).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(
    group: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> str:
    """The split of one group.

    Args:
      group: `Case.group`, e.g. "patient:ID_abc", "study:1.2.3", "slice:ID_0002081b6".
      fractions: (train, val, test), non-negative, summing to 1.
      salt: changes every assignment at once (a different, equally valid split).

    Returns:
      "train", "val" or "test".
    """
    train, val, test = check_fractions(fractions)
    u = unit_hash(group, salt)
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    # A zero test fraction must never receive a group through rounding at the top end.
    if test == 0.0:
        return "val" if val > 0 else "train"
    return "test"
