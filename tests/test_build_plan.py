"""The build plan's JSON lines (for --engine beam), and --engine beam without Beam installed.

Runs without Apache Beam (the main test environment has none).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_tiny_synth_drop

from data_build import build_plan, cli, records
from data_build.cases import Case
from data_build.drop import discover


def test_plan_lines_give_back_the_planned_cases_exactly(tmp_path: Path) -> None:
    root = write_tiny_synth_drop(tmp_path / "drop", dicoms=True, patients=4)
    cases = discover(root, source="render").cases
    unusual = Case("ID_x", polygons=(), pixel_spacing=(0.5, 0.25), position=(1.0, 2.0, -3.5))
    plans = records.plan_shards([*cases, unusual], 3, (0.6, 0.2, 0.2), "salt")
    planned = build_plan.parse_lines(build_plan.plan_lines(plans))
    assert [p.case for p in planned] == [c for plan in plans for c in plan.cases]
    assert [(p.shard, p.split, p.index) for p in planned] == [
        (plan.file, plan.split, i) for plan in plans for i in range(len(plan.cases))]
    restored = next(p.case for p in planned if p.case.id == "ID_x")
    assert restored.polygons == () and isinstance(restored.position, tuple)  # () = known empty mask
    assert any(p.case.polygons for p in planned) and any(p.case.labels for p in planned)


def test_engine_beam_without_beam_says_what_to_install(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam -> ImportError
    root = write_tiny_synth_drop(tmp_path / "drop")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.build, [str(root), "--out", str(out), "--engine", "beam"])
    assert result.exit_code == 2 and "pip install 'fusion[beam]'" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_help_names_both_engines() -> None:
    result = CliRunner().invoke(cli.build, ["--help"])
    assert "--engine [local|beam]" in result.output and "--beam-options" in result.output


def test_beam_options_without_engine_beam_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.build, [str(tmp_path), "--out", str(tmp_path / "o"),
                                            "--beam-options", "--runner=DirectRunner"])
    assert result.exit_code == 2 and "applies to --engine beam only" in result.output
