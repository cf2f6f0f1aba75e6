"""The build plan as JSON lines: one line per planned slice, for engines that read it back.

`records.plan_shards` decides, on the driver, which split and shard each case goes to and in
which order (by patient, deterministic). A distributed engine (`data_build.beam_engine`) must
not rebuild that decision on its workers, and must not put hundreds of thousands of cases into
its pipeline graph; so the driver writes the plan as text, one JSON object a line::

    {"shard": "train-00000-of-00002.tfrecord", "split": "train", "index": 17, "case": {...}}

``index`` is the case's position in its shard: records are written in that order, so a shard's
bytes do not depend on which worker converted which case. ``case`` is every `Case` field;
`case_from_json` restores the tuples that `convert.make_example` compares by value
(``polygons == ()`` means "known empty mask", a list would not compare equal).

Pure Python, no Beam: the base install can write and test the plan.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Iterator, Mapping, Sequence

from data_build.cases import Case


@dataclasses.dataclass(frozen=True)
class PlannedCase:
    """One line of the plan: a case with the shard, split and position it was planned for."""

    shard: str
    split: str
    index: int
    case: Case


def _tuple_or_none(value: Any, item: Any = float) -> tuple | None:
    return None if value is None else tuple(item(v) for v in value)


def _polygons(value: Any) -> tuple | None:
    """JSON lists back to `Case.polygons`: None, () or tuples of (x, y) float pairs."""
    if value is None:
        return None
    return tuple(tuple((float(x), float(y)) for x, y in polygon) for polygon in value)


def case_to_json(case: Case) -> dict[str, Any]:
    """Every field of `case` as JSON-ready values (tuples become lists)."""
    out = dataclasses.asdict(case)
    out["render_paths"] = dict(case.render_paths)
    return out


def case_from_json(data: Mapping[str, Any]) -> Case:
    """Inverse of `case_to_json`: ``case_from_json(case_to_json(c)) == c``.

    Raises:
      KeyError / TypeError / ValueError: not a line this module wrote.
    """
    known = {f.name for f in dataclasses.fields(Case)}
    fields = {k: v for k, v in data.items() if k in known}
    fields["render_paths"] = dict(fields.get("render_paths") or {})
    fields["labels"] = _tuple_or_none(fields.get("labels"), int)
    fields["polygons"] = _polygons(fields.get("polygons"))
    fields["pixel_spacing"] = _tuple_or_none(fields.get("pixel_spacing"))
    fields["position"] = _tuple_or_none(fields.get("position"))
    return Case(**fields)


def plan_lines(plans: Sequence[Any]) -> Iterator[str]:
    """The plan's JSON lines (no newline), shard after shard, cases in shard order.

    Args:
      plans: `records.plan_shards` output (objects with ``file``, ``split`` and ``cases``).
    """
    for plan in plans:
        for index, case in enumerate(plan.cases):
            line = {"shard": plan.file, "split": plan.split, "index": index, "case": case_to_json(case)}
            yield json.dumps(line, sort_keys=True)


def parse_line(line: str) -> PlannedCase:
    """One plan line back to a `PlannedCase`."""
    data = json.loads(line)
    return PlannedCase(str(data["shard"]), str(data["split"]), int(data["index"]),
                       case_from_json(data["case"]))


def parse_lines(lines: Iterable[str]) -> list[PlannedCase]:
    """`parse_line` over non-empty lines."""
    return [parse_line(line) for line in lines if line.strip()]
