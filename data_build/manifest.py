"""The shard folder's contract, ``OUT/manifest.json``, as one typed object.

`fusion-build` writes it last (a folder with a manifest is complete); `fusion-verify`, the
reader, training, export and evaluation read it. Everybody goes through `Manifest.load` and the
attributes below; nobody reads its keys by string. The JSON shape is in docs/design.md
("Shards and manifest") and is unchanged by this class: `Manifest.from_dict(m).to_dict() == m`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from data_build import schema
from data_build.cases import Skip
from data_build.errors import DataBuildError
from data_build.files import atomic_write_text
from data_build.splits import SPLITS
from data_build.windows import PRESETS, WINDOW_NAMES, Window

MANIFEST_FILE = "manifest.json"
#: Written next to the shards while a build runs (`data_build.records`); named in hints here.
PROGRESS_FILE = ".progress.jsonl"


class ManifestError(DataBuildError, ValueError):
    """A shard folder without a readable, well-formed manifest.json."""


@dataclass(frozen=True)
class SplitCounts:
    """What one split holds: slices, slices with a known mask or labels, per type/folder/size."""

    slices: int = 0
    with_mask: int = 0
    with_labels: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_folder: dict[str, int] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitCounts:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ShardEntry:
    """One shard file: its split, record count and checksum."""

    file: str
    split: str
    examples: int
    sha256: str = ""
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _presets_to_json(presets: tuple[Window, ...]) -> dict[str, list[float]]:
    return {name: [w.level, w.width] for name, w in zip(WINDOW_NAMES, presets)}


def presets_from_json(data: Mapping[str, Any] | None) -> tuple[Window, ...]:
    """{window: [level, width]} -> Windows in `WINDOW_NAMES` order (defaults where absent)."""
    data = data or {}
    out = []
    for name in WINDOW_NAMES:
        if name in data:
            level, width = data[name]
            out.append(Window(float(level), float(width)))
        else:
            out.append(PRESETS[name])
    return tuple(out)


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what a shard folder holds and how it was made.

    Attributes:
      schema_version: the record schema (`data_build.schema.SCHEMA_VERSION`).
      source: "render" or "dicom".
      presets: one `Window` per channel, `WINDOW_NAMES` order (HU records are
        windowed at read time with these).
      image_size: the commonest [height, width] of the slices, None for an empty build.
      counts: split -> `SplitCounts`, for every split in `splits.SPLITS`.
      shards: every shard file in plan order.
      skipped: every input left out, with its reason.
      warnings, drop, config, versions, created: provenance (as written by the build).
    """

    schema_version: int
    source: str
    presets: tuple[Window, ...]
    counts: dict[str, SplitCounts]
    shards: tuple[ShardEntry, ...]
    image_size: tuple[int, int] | None = None
    windows: tuple[str, ...] = WINDOW_NAMES
    labels: tuple[str, ...] = schema.LABEL_NAMES
    skipped: tuple[Skip, ...] = ()
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    drop: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    # --- questions every reader asks ---------------------------------------------------------

    def split_count(self, split: str, masked_only: bool = False) -> int:
        """Slices of `split` (only those with a known mask when `masked_only`)."""
        counts = self.counts.get(split, SplitCounts())
        return counts.with_mask if masked_only else counts.slices

    def shards_of(self, split: str) -> list[ShardEntry]:
        """The split's non-empty shards, in manifest order."""
        return [s for s in self.shards if s.split == split and s.examples > 0]

    @property
    def image_side(self) -> int | None:
        """The slices' commonest height (renders and DICOM slices are square), None if unknown."""
        return int(self.image_size[0]) if self.image_size else None

    def held(self) -> str:
        """'train: n, val: n, test: n' for messages."""
        return ", ".join(f"{name}: {self.split_count(name)}" for name in SPLITS)

    # --- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the order the build has always written them."""
        return {
            "schema_version": self.schema_version,
            "windows": list(self.windows),
            "labels": list(self.labels),
            "presets": _presets_to_json(self.presets),
            "source": self.source,
            "image_size": list(self.image_size) if self.image_size else None,
            "counts": {name: c.to_dict() for name, c in self.counts.items()},
            "shards": [s.to_dict() for s in self.shards],
            "skipped": [{"id": s.id, "reason": s.reason, "detail": s.detail, "path": s.path}
                        for s in self.skipped],
            "skipped_by_reason": dict(self.skipped_by_reason),
            "warnings": list(self.warnings),
            "drop": dict(self.drop),
            "config": dict(self.config),
            "versions": dict(self.versions),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_FILE) -> Manifest:
        """Parse the JSON object.

        Raises:
          ManifestError: not an object, a missing key or a value of the wrong shape.
        """
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where} is not a JSON object; rebuild the shards (fusion-build --overwrite)")
        try:
            size = data.get("image_size")
            return cls(
                schema_version=int(data["schema_version"]),
                source=str(data["source"]),
                presets=presets_from_json(data.get("presets")),
                counts={name: SplitCounts.from_dict(data["counts"].get(name, {})) for name in SPLITS},
                shards=tuple(ShardEntry(str(s["file"]), str(s["split"]), int(s["examples"]),
                                        str(s.get("sha256", "")), int(s.get("bytes", 0)))
                             for s in data["shards"]),
                image_size=(int(size[0]), int(size[1])) if size else None,
                windows=tuple(data.get("windows", WINDOW_NAMES)),
                labels=tuple(data.get("labels", schema.LABEL_NAMES)),
                skipped=tuple(Skip(str(s["id"]), str(s["reason"]), str(s.get("detail", "")),
                                   str(s.get("path", ""))) for s in data.get("skipped", [])),
                skipped_by_reason=dict(data.get("skipped_by_reason", {})),
                warnings=tuple(data.get("warnings", [])),
                drop=dict(data.get("drop", {})),
                config=dict(data.get("config", {})),
                versions=dict(data.get("versions", {})),
                created=str(data.get("created", "")),
            )
        except KeyError as err:
            raise ManifestError(f"{where} lacks the key {err}; rebuild the shards (fusion-build --overwrite)") from None
        except (TypeError, ValueError, AttributeError, IndexError) as err:
            raise ManifestError(
                f"{where} is malformed ({err}); rebuild the shards (fusion-build --overwrite)"
            ) from None

    # --- files ---------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``folder/manifest.json`` atomically. Returns its path."""
        path = Path(folder) / MANIFEST_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, default=str) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Manifest:
        """Read ``folder/manifest.json``.

        Raises:
          ManifestError: no such folder, no manifest (an unfinished or wrong folder), unreadable
            or malformed JSON, another schema version. The message says what to do.
        """
        folder = Path(folder)
        path = folder / MANIFEST_FILE
        if not folder.exists():
            raise ManifestError(
                f"shard folder {folder} does not exist. Build shards first with "
                f"fusion-build ROOT --out {folder}."
            )
        if not path.is_file():
            hint = (
                " An interrupted build is there: finish it with fusion-build --resume."
                if (folder / PROGRESS_FILE).exists()
                else " Build shards first with fusion-build ROOT --out FOLDER."
            )
            raise ManifestError(f"no {MANIFEST_FILE} in {folder}.{hint}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ManifestError(f"{path} is not readable JSON ({err}); rebuild with --overwrite") from None
        version = data.get("schema_version") if isinstance(data, Mapping) else None
        if isinstance(data, Mapping) and version != schema.SCHEMA_VERSION:
            raise ManifestError(
                f"{path} has schema_version {version!r}, this fusion reads "
                f"{schema.SCHEMA_VERSION}; rebuild the shards with this version"
            )
        return cls.from_dict(data, str(path))
