"""Deterministic train/val/test assignment by group (patient, else study, else slice).

Two methods; in both a group (so a patient) never lands in two splits, and the result is the
same on every machine, in every run, whatever the order of the cases.

- ``stratified`` (default): a group with a slice that shows two or more hemorrhage types forms
  the stratum "multi"; any other group is stratified by its rarest positive type (rarest over
  the drop's groups; "none" for groups without bleeds, "unlabelled" without labels). Within a
  stratum, groups are taken in ``sha256(salt + group)`` order and placed by systematic sampling
  with a hashed phase, so each stratum's split counts match the fractions to within one group.
  Without strata, a small drop can put a whole type in one split (seen on the demo drop: nearly
  all subarachnoid patients in test, one in train). Without the "multi" stratum, patients with
  several types went wherever their rarest type's stratum sent them: the demo drop's train split
  held one of its four patients with subarachnoid blood beside another type. Adding groups to
  a drop can move existing groups of the same stratum.
- ``hash``: a group's split depends only on ``sha256(salt + group)``: adding slices to a drop
  never moves existing groups, at the price of type balance on small drops.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping, Sequence

from data_build.errors import DataBuildError

SPLITS: tuple[str, ...] = ("train", "val", "test")
METHODS: tuple[str, ...] = ("stratified", "hash")
DEFAULT_METHOD = "stratified"
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
DEFAULT_SALT = "fusion-v1"
#: Changes whenever a method's assignment of the same groups changes (recorded in a build's
#: config, so ``--resume`` of a build from another version says why it is refused).
#: 2: ``stratified`` gained the "multi" stratum.
ALGORITHM_VERSION = 2


class SplitError(DataBuildError, ValueError):
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
    return _split_at(unit_hash(group, salt), check_fractions(fractions))


def _split_at(u: float, fractions: tuple[float, float, float]) -> str:
    """The split at position u in [0, 1) of the (train, val, test) line."""
    train, val, test = fractions
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    # A zero test fraction must never receive a group through rounding at the top end.
    if test > 0.0:
        return "test"
    return "val" if val > 0.0 else "train"


def stratum_of(labels: Iterable[Sequence[int] | None], rarity: Mapping[int, int]) -> str:
    """Stratum of a group from its slices' labels (`schema.LABEL_NAMES` order).

    Args:
      labels: each slice's labels, None when unknown.
      rarity: type index (1..5) -> number of groups with that type (smaller = rarer).

    Returns:
      "multi" when a slice shows two or more types, else "type:<index>" of the group's rarest
      positive type, "none" when its labels show no bleed, "unlabelled" when no slice has
      labels.
    """
    known = [lab for lab in labels if lab is not None]
    if not known:
        return "unlabelled"
    if any(sum(1 for v in lab[1:] if v) >= 2 for lab in known):
        return "multi"
    positive = {i for lab in known for i in range(1, len(lab)) if lab[i]}
    if not positive:
        return "none"
    return f"type:{min(positive, key=lambda i: (rarity.get(i, 0), i))}"


def assign_groups(
    group_labels: Mapping[str, Sequence[Sequence[int] | None]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
    method: str = DEFAULT_METHOD,
) -> dict[str, str]:
    """Assign every group to a split.

    Args:
      group_labels: group -> its slices' labels (None when unknown).
      fractions: (train, val, test), non-negative, summing to 1.
      salt: changes every assignment at once (a different, equally valid split).
      method: "stratified" or "hash" (see the module docstring).

    Returns:
      group -> "train" | "val" | "test".

    Raises:
      SplitError: bad fractions or an unknown method.
    """
    fr = check_fractions(fractions)
    if method not in METHODS:
        raise SplitError(f"unknown split method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "hash":
        return {g: split_of(g, fr, salt) for g in group_labels}
    rarity: dict[int, int] = {}
    for labels in group_labels.values():
        for i in {i for lab in labels if lab is not None for i in range(1, len(lab)) if lab[i]}:
            rarity[i] = rarity.get(i, 0) + 1
    strata: dict[str, list[str]] = {}
    for group, labels in group_labels.items():
        strata.setdefault(stratum_of(labels, rarity), []).append(group)
    out: dict[str, str] = {}
    for stratum, groups in strata.items():
        groups.sort(key=lambda g: (unit_hash(g, salt), g))
        phase = unit_hash("stratum:" + stratum, salt)
        n = len(groups)
        for rank, group in enumerate(groups):
            out[group] = _split_at((rank + phase) / n, fr)
    return out
