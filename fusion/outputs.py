"""Recognise fusion-predict's own output folders, so that an earlier ``--out`` inside an input
folder is never read back as new input (its masks/ and overlays/ PNGs would be predicted on).

A folder is a fusion output when it holds the marker `MARKER` that fusion-predict writes first,
or the tables of a run (``predictions.csv`` or ``predictions.partial.csv`` together with
``series.csv``/``series.partial.csv``), which older runs without the marker left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from data_build.files import atomic_write_text

#: Written into every fusion-predict output folder (what, which version, which formats).
MARKER = "fusion_predict.json"
_TABLE_PAIRS = (("predictions.csv", "series.csv"),
                ("predictions.partial.csv", "series.partial.csv"))


def is_fusion_output(folder: Path) -> bool:
    """True when ``folder`` is (or was) a fusion-predict ``--out``."""
    if (folder / MARKER).is_file():
        return True
    return any((folder / a).is_file() and (folder / b).is_file() for a, b in _TABLE_PAIRS)


def write_marker(out: Path, info: Mapping[str, Any]) -> None:
    """Write `MARKER` into ``out`` (atomically)."""
    atomic_write_text(out / MARKER, json.dumps({"written_by": "fusion-predict", **info},
                                                indent=1) + "\n")


def walk_inputs(
    path: Path, exclude: Iterable[Path] = (), on_skip: Callable[[Path], None] | None = None,
    on_error: Callable[[OSError], None] | None = None,
) -> Iterable[tuple[Path, bool]]:
    """(file, explicitly given) for a path; folders recursively in sorted order.

    Hidden files and folders are left out; so are the folders in ``exclude`` (the run's own
    ``--out``) and every fusion output folder (`is_fusion_output`), each reported once through
    ``on_skip`` (except the run's own ``--out``). A folder that cannot be listed is passed to
    ``on_error`` (``err.filename`` names it) and the walk goes on.
    """
    if not path.is_dir():
        yield path, True
        return
    excluded = {p.resolve() for p in exclude}
    if path.resolve() in excluded or is_fusion_output(path):
        if on_skip is not None and path.resolve() not in excluded:
            on_skip(path)
        return
    found: list[Path] = []
    for root, dirs, files in os.walk(path, onerror=on_error):
        here = Path(root)
        kept = []
        for d in sorted(dirs):
            sub = here / d
            if d.startswith("."):
                continue
            if sub.resolve() in excluded:
                continue
            if is_fusion_output(sub):
                if on_skip is not None:
                    on_skip(sub)
                continue
            kept.append(d)
        dirs[:] = kept  # os.walk descends only into these, in sorted order
        found.extend(here / n for n in files if not n.startswith(".") and (here / n).is_file())
    for f in sorted(found):  # one global order, as before (parents before deeper folders)
        yield f, False
