"""Choices and defaults of the `data_build` commands, importable without heavy dependencies.

The CLI (`data_build.cli`) reads its `click.Choice` lists and defaults from here, so `--help`
stays fast and no option re-declares a library constant; the modules that implement them
(`drop`, `records`, `synth.writer`) take the same names from here.
"""
from __future__ import annotations

#: `fusion-build --source`: "auto" picks renders when ROOT/renders exists, else DICOM.
SOURCES: tuple[str, ...] = ("auto", "render", "dicom")
#: Examples per shard: ~130 MB for full-size 512x512 renders (four JPEGs + mask, ~130 kB a slice).
DEFAULT_SHARD_SIZE = 1024
#: `fusion-synth --window-set`: the real drop's window folder names, or the brief's.
WINDOW_SET_NAMES: tuple[str, ...] = ("real", "brief")
