"""requirements-no-tensorflow.txt (install without TensorFlow) holds setup.cfg's pins, minus TensorFlow."""
from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pins(lines: list[str]) -> set[str]:
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}


def test_requirements_without_tensorflow_match_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    install = _pins(cfg["options"]["install_requires"].splitlines())
    listed = _pins((REPO / "requirements-no-tensorflow.txt").read_text().splitlines())
    assert any(p.startswith("tensorflow==") for p in install)
    assert listed == {p for p in install if not p.startswith("tensorflow==")}
