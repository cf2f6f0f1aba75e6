"""Print the pins `make test-beam` installs: the base dependencies without TensorFlow and Keras,
the ``beam`` extra and pytest, all read from setup.cfg (one home for every pin).

The Beam build never imports TensorFlow, and apache-beam 2.77 needs protobuf < 7: a virtualenv
without TensorFlow tests the engine as a Beam worker runs it.
"""
from __future__ import annotations

import configparser
import re
from pathlib import Path

#: Base dependencies the Beam build and its tests do not need.
LEFT_OUT = {"tensorflow", "keras"}


def _pins(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def main() -> None:
    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    base = [p for p in _pins(config["options"]["install_requires"])
            if re.split(r"[<>=!\[ ]", p, maxsplit=1)[0].lower() not in LEFT_OUT]
    extras = config["options.extras_require"]
    test = [p for p in _pins(extras["test"]) if p.lower().startswith("pytest")]
    print("\n".join(base + _pins(extras["beam"]) + test))


if __name__ == "__main__":
    main()
