"""Splits: stable across runs and order, leak-free by group, fractions approximately kept."""
from __future__ import annotations

import collections
import random
import subprocess
import sys

import pytest

from data_build import splits
from data_build.cases import Case
from data_build.splits import SplitError, parse_fractions, split_of

GROUPS = [f"patient:ID_{i:08x}" for i in range(4000)]


def test_stable_across_processes_and_order() -> None:
    here = [split_of(g) for g in GROUPS[:200]]
    code = (
        "from data_build.splits import split_of\n"
        "print(','.join(split_of('patient:ID_%08x' % i) for i in range(200)))"
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


# --- stratified group splits -------------------------------------------------------------------


def _labels(*types: int) -> tuple[int, ...]:
    lab = [0] * 6
    for t in types:
        lab[0] = lab[t] = 1
    return tuple(lab)


def test_stratified_balances_every_type_and_never_splits_a_group() -> None:
    # 5 types x 10 patients, 3 slices each, plus 20 patients without bleeds.
    groups = {f"patient:t{t}-{i}": [_labels(t)] * 3 for t in range(1, 6) for i in range(10)}
    groups.update({f"patient:n{i}": [_labels()] * 3 for i in range(20)})
    assigned = splits.assign_groups(groups, (0.8, 0.1, 0.1), method="stratified")
    assert set(assigned) == set(groups)
    for t in range(1, 6):
        got = [assigned[f"patient:t{t}-{i}"] for i in range(10)]
        assert (got.count("train"), got.count("val"), got.count("test")) == (8, 1, 1), t
    normal = [assigned[f"patient:n{i}"] for i in range(20)]
    assert (normal.count("train"), normal.count("val"), normal.count("test")) == (16, 2, 2)


def test_stratified_beats_hash_on_a_small_drop() -> None:
    # 8 patients per type: the hash alone leaves some type without a test (or val) patient
    # for most salts; systematic sampling gives every split its expected share within 1.
    groups = {f"patient:t{t}-{i}": [_labels(t)] for t in range(1, 6) for i in range(8)}
    worst = 0
    for salt in ("a", "b", "c", "d"):
        assigned = splits.assign_groups(groups, (0.5, 0.25, 0.25), salt=salt)
        for t in range(1, 6):
            got = [assigned[f"patient:t{t}-{i}"] for i in range(8)]
            worst = max(worst, abs(got.count("train") - 4), abs(got.count("val") - 2),
                        abs(got.count("test") - 2))
    assert worst <= 1


def test_stratified_is_deterministic_and_order_free_and_uses_rarest_type() -> None:
    groups = {f"patient:{i}": [_labels(1 + i % 5), None] for i in range(40)}
    a = splits.assign_groups(groups, method="stratified")
    b = splits.assign_groups(dict(reversed(list(groups.items()))), method="stratified")
    assert a == b
    rarity = {1: 10, 4: 2}
    assert splits.stratum_of([_labels(1), _labels(4)], rarity) == "type:4"
    assert splits.stratum_of([_labels()], rarity) == "none"
    assert splits.stratum_of([None, None], rarity) == "unlabelled"
    # Two types on one slice make the group "multi"; on different slices they do not.
    assert splits.stratum_of([_labels(1), _labels(4, 5)], rarity) == "multi"
    assert splits.stratum_of([_labels(1), _labels(4), None], rarity) == "type:4"


def test_stratified_spreads_patients_with_several_types_over_the_splits() -> None:
    # The demo's failure: 4 patients with subarachnoid blood (4) beside another type, among
    # single-type patients whose rarest-type strata used to decide where they went. The
    # "multi" stratum gives every split its share of them (within one group) for any salt.
    groups = {f"patient:t{t}-{i}": [_labels(t)] * 2 for t in range(1, 6) for i in range(8)}
    combos = [(4, 5), (2, 4), (1, 4, 5), (3, 4), (2, 5), (1, 2), (3, 5), (2, 3, 4)]
    groups.update({f"patient:m{i}": [_labels(*c), _labels(c[0])] for i, c in enumerate(combos)})
    for salt in ("a", "b", "c", "d", "e"):
        assigned = splits.assign_groups(groups, (0.5, 0.25, 0.25), salt=salt)
        got = [assigned[f"patient:m{i}"] for i in range(len(combos))]
        assert (got.count("train"), got.count("val"), got.count("test")) == (4, 2, 2), salt
        for t in range(1, 6):
            single = [assigned[f"patient:t{t}-{i}"] for i in range(8)]
            assert abs(single.count("train") - 4) <= 1 and abs(single.count("test") - 2) <= 1


def test_hash_method_matches_split_of_and_unknown_method_is_refused() -> None:
    groups = {f"slice:ID_{i:09x}": [None] for i in range(50)}
    assigned = splits.assign_groups(groups, method="hash")
    assert all(assigned[g] == splits.split_of(g) for g in groups)
    with pytest.raises(splits.SplitError, match="unknown split method"):
        splits.assign_groups(groups, method="random")
