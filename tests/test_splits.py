"""Splits: stable across runs and order, leak-free by group, fractions approximately kept."""
from __future__ import annotations

import collections
import random
import subprocess
import sys

import pytest

from data_build.cases import Case
from data_build.splits import SplitError, parse_fractions, split_of

GROUPS = [f"patient:ID_{i:08x}" for i in range(4000)]


def test_stable_across_processes_and_order() -> None:
    here = [split_of(g) for g in GROUPS[:200]]
    code = (
        "from data_build.splits import split_of\n"
        f"print(','.join(split_of('patient:ID_%08x' % i) for i in range(200)))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert there.stdout.strip().split(",") == here
    shuffled = GROUPS[:200][::-1]
    assert {g: split_of(g) for g in shuffled} == dict(zip(GROUPS[:200], here))


def test_fractions_are_approximately_kept() -> None:
    counts = collections.Counter(split_of(g) for g in GROUPS)
    assert abs(counts["train"] / len(GROUPS) - 0.8) < 0.03
    assert abs(counts["val"] / len(GROUPS) - 0.1) < 0.02
    assert abs(counts["test"] / len(GROUPS) - 0.1) < 0.02
    other = collections.Counter(split_of(g, (0.5, 0.5, 0.0)) for g in GROUPS)
    assert other["test"] == 0 and abs(other["train"] - other["val"]) < 250


def test_no_patient_in_two_splits() -> None:
    rng = random.Random(0)
    cases = [
        Case(id=f"ID_{i:09x}", patient_id=f"P{rng.randrange(300)}", study_id=f"S{i % 7}")
        for i in range(3000)
    ]
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for case in cases:
        seen[case.patient_id].add(split_of(case.group))
    assert all(len(s) == 1 for s in seen.values())
    assert len({s for v in seen.values() for s in v}) == 3  # all three splits used


def test_salt_changes_assignment() -> None:
    a = [split_of(g) for g in GROUPS[:500]]
    b = [split_of(g, salt="other") for g in GROUPS[:500]]
    assert a != b


@pytest.mark.parametrize("bad", ["0.8,0.1", "0.8,0.1,0.2", "a,b,c", "-0.1,0.6,0.5"])
def test_bad_fractions_raise(bad: str) -> None:
    with pytest.raises(SplitError):
        parse_fractions(bad)


def test_parse_fractions() -> None:
    assert parse_fractions("0.7, 0.2, 0.1") == (0.7, 0.2, 0.1)
