"""Discover a drop: renders, labels, flagged list, segmentation CSVs, DICOMs -> Cases + Skips.

Layout and quirks: ``shared/docs/dataset-format.md``. `discover` reads only directory listings,
CSVs and (optionally) DICOM headers, never pixels, so the full drop (~465k render files, 752k
label rows) is discovered in seconds; pixels are read later by `data_build.convert` in workers.

Decisions (each one also shows up in `Drop.stats`, `Drop.warnings` or `Drop.skips`):

- **Source**: "auto" = "render" when ``<root>/renders/`` exists, else "dicom".
- **Window folders**: either name set (``brain_window`` or the brief's ``bone_window``) maps to
  the canonical channel; if one type folder holds both, the real name wins and the alias folder
  is ignored with a warning. Unknown type or window folders are ignored with a warning; files
  other than ``.jpg``/``.jpeg`` are ignored and counted (``ignored_files``).
- **Duplicate id**: a slice found under two type folders is kept in **neither**
  (Skip "duplicate-id"): the folders disagree on what the slice shows and nothing says which
  one is right.
- **Missing window**: a slice lacking any of the four windows -> Skip "missing-window".
- **Flagged**: ids in ``flagged.txt`` (CRLF, ``.jpg`` suffixes) -> Skip "flagged".
- **Labels**: ``hemorrhage-labels.csv`` is required. Rows with values other than 0/1 and ids
  with conflicting duplicate rows get no labels (labels None, a warning, counted); identical
  duplicate rows are merged silently (counted). Extra columns are ignored with a warning.
- **Segmentation CSVs** (``segmentation/``, the root, ``Hemorrhage Segmentation Project/``):
  recognised by header (``Majority Label`` = Detection, ``ROI`` = Tracing); byte-identical files
  are read once. Rows in Labeling State "Flagged" are ignored (a reader flagged the image as
  unusable, so its tracing is not trusted); other states count when they hold a polygon.
- **One slice's mask within one Detection file**: if any row has a non-empty Correct Label,
  the mask is the Correct Label of the best such row (higher Agreement, then more Total
  Qualified Reads, then the first row): it holds all the slice's polygons. Otherwise the
  mask is the union of all rows' Majority Labels (one row per region). Only the fields used are
  parsed (a Majority Label is not parsed when a Correct Label is used).
- **Tracing file**: the union of the slice's rows' ROI polygons.
- **Several files for one slice** (a "multi" slice in two Detection files, or a slice in a
  Detection file and the Tracing file): the **union of their regions** (identical polygons
  kept once). ``mask_source`` is the highest-ranked source that contributed:
  correct > majority > tracing.
- **Malformed polygon** in a field used for a slice: its mask becomes unknown (polygons None)
  and Skip "malformed-polygon" is recorded; the case is kept with its labels.
- **Known-empty masks**: render slices of the ``normal`` folder get polygons () and
  mask_source "normal", unless their labels say bleed or a CSV traces a region (then the mask
  is unknown and a warning says why). For source "dicom", slices labelled any = 0 without a
  polygon get the same known-empty mask.
- **Folder vs labels**: ``<type>`` needs label <type> = 1, ``multi`` needs >= 2 types,
  ``normal`` needs any = 0; disagreements are warned (first 50 by id, then a count) and
  counted (``folder_label_mismatch``); the cases are kept.
- **DICOMs**: any ``*.dcm`` under the root (outside ``renders/``), matched by file stem = id.
- **strict**: every skip or warning raises `DropError` instead.
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from data_build import dicom, drop_io, polygons, schema
from data_build.cases import INTENDED_EXCLUSIONS, Case, DropError, Polygon, Skip
from data_build.choices import SOURCES
from data_build.windows import ALIASES, WINDOW_NAMES, canonical_window_name

RENDERS_DIR = "renders"
LABELS_FILE = "hemorrhage-labels.csv"
FLAGGED_FILE = "flagged.txt"
#: Where segmentation CSVs are looked for, relative to the root ("" = the root itself).
SEGMENTATION_DIRS: tuple[str, ...] = ("segmentation", "", "Hemorrhage Segmentation Project")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")

DETECTION_REQUIRED: tuple[str, ...] = (
    "Origin",
    "Majority Label",
    "Correct Label",
    "Agreement",
    "Total Qualified Reads",
)
TRACING_REQUIRED: tuple[str, ...] = ("Origin", "ROI")
#: Rank of mask sources when several files contribute to one slice (lower = preferred).
SOURCE_RANK: Mapping[str, int] = {"correct": 0, "majority": 1, "tracing": 2}
#: Per-slice warnings of one kind kept in full before the rest are only counted.
MAX_LISTED = 50
#: DICOM headers per worker task.
HEADER_CHUNK = 256


@dataclass
class Drop:
    """A discovered drop.

    Attributes:
      root: the drop folder.
      source: "render" or "dicom".
      window_set: "real" (``brain_window`` folders) or "brief" (``bone_window`` folders).
      cases: one `Case` per usable slice, sorted by id.
      skips: inputs left out (or, for "malformed-polygon", kept without a mask).
      warnings: human-readable problems that did not skip anything.
      stats: counts (see `discover`).
    """

    root: Path
    source: str
    window_set: str
    cases: list[Case]
    skips: list[Skip] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


class _Report:
    """Collects skips, warnings and counts; in strict mode the first problem raises."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skips: list[Skip] = []
        self.warnings: list[str] = []
        self.stats: Counter[str] = Counter()
        self._listed: Counter[str] = Counter()

    def skip(self, id: str, reason: str, detail: str = "", path: str = "") -> None:
        if self.strict and reason not in INTENDED_EXCLUSIONS:
            raise DropError(f"{reason}: {id}: {detail} (strict mode stops at the first problem)")
        self.skips.append(Skip(id=id, reason=reason, detail=detail, path=path))
        self.stats[f"skipped:{reason}"] += 1

    def warn(self, message: str, kind: str = "") -> None:
        """Warn; with a kind, only the first `MAX_LISTED` of that kind are kept in full."""
        if self.strict:
            raise DropError(f"{message} (strict mode stops at the first problem)")
        if kind:
            self._listed[kind] += 1
            if self._listed[kind] > MAX_LISTED:
                return
        self.warnings.append(message)

    def finish(self) -> None:
        for kind, count in sorted(self._listed.items()):
            if count > MAX_LISTED:
                self.warnings.append(f"... and {count - MAX_LISTED} more {kind} warnings")


def _strip_suffix(name: str) -> str:
    """``ID_x.jpg`` / ``ID_x.dcm`` / ``dir/ID_x.jpg`` -> ``ID_x``."""
    name = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    if dot and suffix.lower() in ("jpg", "jpeg", "png", "dcm"):
        return stem
    return name


# --- hostile file systems ---------------------------------------------------------------------


def _list_dir(path: str | Path, report: _Report) -> list[os.DirEntry[str]]:
    """A folder's entries sorted by name; [] with a warning when it cannot be listed."""
    try:
        return drop_io.scandir(path)  # os.scandir, sorted; a URL drop's listing (--engine beam)
    except OSError as err:  # unreadable folder, symlink loop, vanished while scanning
        report.warn(f"ignored unreadable folder {str(path)!r}: {err.strerror or err}",
                    kind="unreadable-folder")
        return []


def _entry_is(entry: os.DirEntry[str], kind: str, report: _Report) -> bool:
    """`entry.is_file()` / `is_dir()` (kind "file" / "dir"), False with a warning on an error.

    `DirEntry.is_file` follows symlinks and raises on a symlink loop (ELOOP) or an
    unreadable target; one such entry must not end the scan of 465k files.
    """
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError as err:
        report.stats["unreadable_entries"] += 1
        report.warn(f"ignored {entry.path!r}: {err.strerror or err}", kind="unreadable-entry")
        return False


# --- renders ----------------------------------------------------------------------------------


def _scan_renders(
    renders: Path, report: _Report, progress: bool
) -> tuple[dict[str, dict[str, dict[str, str]]], str]:
    """id -> folder type -> canonical window -> path, and the window-name set seen."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    raw_windows: set[str] = set()
    type_entries = _list_dir(renders, report)
    for type_entry in tqdm(type_entries, desc="renders", unit="folder", disable=not progress):
        if not _entry_is(type_entry, "dir", report):
            report.stats["ignored_files"] += 1
            continue
        folder_type = type_entry.name.strip().lower()
        if folder_type not in schema.FOLDER_TYPES:
            report.warn(
                f"ignored unknown render folder {type_entry.path!r}: expected one of "
                f"{', '.join(schema.FOLDER_TYPES)}"
            )
            continue
        # Real names before aliases, so a folder holding both keeps the real one.
        window_entries = sorted(
            _list_dir(type_entry.path, report),
            key=lambda e: (e.name.strip().lower() in ALIASES, e.name),
        )
        taken: dict[str, str] = {}
        for window_entry in window_entries:
            if not _entry_is(window_entry, "dir", report):
                report.stats["ignored_files"] += 1
                continue
            window = canonical_window_name(window_entry.name)
            if window is None:
                report.warn(
                    f"ignored unknown window folder {window_entry.path!r}: expected one of "
                    f"{', '.join(WINDOW_NAMES)} (or {', '.join(ALIASES)})"
                )
                continue
            if window in taken:
                report.warn(
                    f"ignored {window_entry.path!r}: {taken[window]!r} already provides the "
                    f"{window} channel of {folder_type!r}"
                )
                continue
            taken[window] = window_entry.name
            raw_windows.add(window_entry.name.strip().lower())
            _scan_window(window_entry.path, folder_type, window, found, report)
    has_alias = bool(raw_windows & set(ALIASES))
    has_real = bool(raw_windows & set(ALIASES.values()))
    window_set = "brief" if has_alias and not has_real else "real"
    return found, window_set


def _scan_window(
    folder: str,
    folder_type: str,
    window: str,
    found: dict[str, dict[str, dict[str, str]]],
    report: _Report,
) -> None:
    stats = report.stats
    for entry in _list_dir(folder, report):
        name = entry.name
        lower = name.lower()
        if not lower.endswith(IMAGE_SUFFIXES) or not _entry_is(entry, "file", report):
            stats["ignored_files"] += 1
            continue
        stats["render_files"] += 1
        slice_id = name[: name.rfind(".")]
        windows = found.setdefault(slice_id, {}).setdefault(folder_type, {})
        if window in windows:  # ID.jpg and ID.jpeg side by side
            report.warn(f"{slice_id}: two files for {folder_type}/{window}; kept "
                        f"{windows[window]!r}, ignored {entry.path!r}", kind="duplicate-file")
            continue
        windows[window] = entry.path


# --- labels and flagged -----------------------------------------------------------------------


def _read_labels(path: Path, report: _Report) -> pd.DataFrame:
    """The usable label rows: index = id, int8 columns `schema.LABEL_NAMES` (bad ids left out)."""
    if not path.is_file():
        raise DropError(
            f"labels file {str(path)!r} not found: the drop root must hold {LABELS_FILE} "
            f"(columns Image, {', '.join(schema.LABEL_NAMES)})"
        )
    try:
        header = pd.read_csv(drop_io.csv_source(path), nrows=0, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise DropError(f"labels file {str(path)!r} is not a readable CSV: {err}") from None
    by_lower = {str(c).strip().lower(): str(c) for c in header.columns}
    wanted = ("image", *schema.LABEL_NAMES)
    missing = [name for name in wanted if name not in by_lower]
    if missing:
        raise DropError(
            f"labels file {str(path)!r} lacks required column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, header.columns))}"
        )
    extra = [c for low, c in by_lower.items() if low not in wanted]
    if extra:
        report.warn(f"{LABELS_FILE}: ignored extra column(s) {', '.join(extra)}")
    columns = [by_lower[name] for name in wanted]
    table = pd.read_csv(
        drop_io.csv_source(path), usecols=columns, dtype={by_lower["image"]: str}, encoding="utf-8-sig"
    )
    table.columns = list(wanted)
    report.stats["label_rows"] = len(table)
    ids = table["image"].fillna("").astype(str).str.strip()
    if ids.str.contains(".", regex=False).any():  # rare: skip the slow regex otherwise
        ids = ids.str.replace(r"\.(jpg|jpeg|png|dcm)$", "", regex=True, case=False)
    values = table[list(schema.LABEL_NAMES)].apply(pd.to_numeric, errors="coerce")
    valid = values.isin([0, 1]).all(axis=1).to_numpy() & (ids != "").to_numpy()
    if not valid.all():
        bad = ids[~valid].tolist()
        report.stats["label_rows_invalid"] = len(bad)
        report.warn(
            f"{LABELS_FILE}: {len(bad)} row(s) with an empty id or a label other than 0/1 "
            f"(those ids get no labels), e.g. {', '.join(map(str, bad[:5]))}"
        )
    clean = values[valid].astype(np.int8)
    clean.insert(0, "image", ids[valid].to_numpy())
    deduped = clean.drop_duplicates()
    report.stats["label_rows_duplicate"] = len(clean) - len(deduped)
    conflicting = deduped["image"][deduped["image"].duplicated(keep=False)].unique().tolist()
    if conflicting:
        report.stats["label_ids_conflicting"] = len(conflicting)
        report.warn(
            f"{LABELS_FILE}: {len(conflicting)} id(s) with conflicting rows get no labels, "
            f"e.g. {', '.join(conflicting[:5])}"
        )
        deduped = deduped[~deduped["image"].isin(conflicting)]
    rejected = set(ids[~valid].tolist())
    if rejected:  # an id with one good and one bad row is still in doubt
        deduped = deduped[~deduped["image"].isin(rejected)]
    types = deduped[list(schema.TYPE_NAMES)].to_numpy()
    inconsistent = int((deduped["any"].to_numpy() != types.max(axis=1, initial=0)).sum())
    if inconsistent:
        report.stats["label_any_inconsistent"] = inconsistent
        report.warn(f"{LABELS_FILE}: {inconsistent} row(s) where 'any' != max of the types")
    return deduped.set_index("image")


def _labels_for(table: pd.DataFrame, ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """id -> labels tuple for the drop's slices only (the table covers ~6x more slices)."""
    rows = table[table.index.isin(list(ids))]
    values = rows[list(schema.LABEL_NAMES)].to_numpy().tolist()
    return dict(zip(rows.index.tolist(), map(tuple, values)))


def _decode_text(data: bytes) -> str:
    """Text of a small list file: UTF-8 (BOM or not), else UTF-16 (BOM, or NULs in every other
    byte: Windows Notepad's "Unicode"), else Latin-1-tolerant UTF-8 with replacements."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    if len(data) >= 4 and data.count(0) * 3 >= len(data):  # UTF-16 without a BOM
        zeros_even = data[0::2].count(0) > data[1::2].count(0)
        return data.decode("utf-16-be" if zeros_even else "utf-16-le", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def _read_flagged(path: Path, report: _Report) -> set[str]:
    """Flagged ids; a missing file means none. Handles CRLF, ``.jpg`` suffixes, UTF-16.

    A flagged.txt that exists but cannot be read (a folder, a symlink loop, no permission) is
    warned loudly: its slices would otherwise be trained on.
    """
    if not drop_io.lexists(path):
        return set()
    try:
        data = path.read_bytes()
    except OSError as err:
        report.warn(f"{FLAGGED_FILE} at {str(path)!r} cannot be read ({err.strerror or err}): "
                    "flagged slices are NOT excluded; fix or remove it and rebuild")
        return set()
    text = _decode_text(data)
    return {_strip_suffix(line) for line in text.splitlines() if line.strip()}


# --- segmentation CSVs ------------------------------------------------------------------------


@dataclass
class _SliceMask:
    """What the segmentation files say about one slice."""

    polygons: list[Polygon] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    malformed: list[str] = field(default_factory=list)

    def add(self, found: Iterable[Polygon], source: str) -> None:
        """Union in a file's polygons (a region already present is kept once)."""
        self.sources.add(source)
        self.polygons.extend(p for p in found if p not in self.polygons)

    @property
    def source(self) -> str:
        return min(self.sources, key=SOURCE_RANK.__getitem__) if self.sources else ""


def _segmentation_files(root: Path, report: _Report) -> list[Path]:
    """Candidate CSVs, byte-identical copies dropped (first by folder order, then name)."""
    seen: dict[str, Path] = {}
    for folder in SEGMENTATION_DIRS:
        directory = root / folder if folder else root
        if not directory.is_dir():
            continue
        for entry in _list_dir(directory, report):
            if not entry.name.lower().endswith(".csv") or entry.name == LABELS_FILE:
                continue
            try:
                if not entry.is_file():
                    continue
                digest = hashlib.sha256(drop_io.read_bytes(entry.path)).hexdigest()
            except OSError as err:  # symlink loop, no permission: skip this file, go on
                detail = f"unreadable file: {err.strerror or err}"
                report.skip(entry.name, "bad-segmentation-csv", detail, entry.path)
                report.warn(f"ignored unreadable segmentation file {entry.path!r}: {detail}")
                continue
            if digest in seen:
                report.stats["segmentation_duplicate_files"] += 1
                continue
            seen[digest] = drop_io.as_path(entry.path)
    return list(seen.values())


def _csv_header(path: Path) -> list[str]:
    with drop_io.text_handle(path) as handle:
        return [c.strip() for c in next(csv.reader(handle), [])]


#: Physical lines one salvaged CSV record may span (quoted multi-line fields).
_MAX_RECORD_LINES = 200


def _read_segmentation_csv(path: Path, report: _Report) -> pd.DataFrame:
    """Quote-aware read (multi-line fields); every cell as text, empty cells as "".

    Free-text cells (``Comments``) are where hostile bytes live: a non-UTF-8 byte is read as
    U+FFFD (the row is kept, the file warned), and a row that breaks the CSV quoting (an
    unterminated quote swallows the rest of the file) is dropped alone, counted and warned.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        report.warn(f"segmentation file {str(path)!r}: {text.count(chr(0xFFFD))} byte(s) are not "
                    "UTF-8 (read as U+FFFD); its rows are kept")
    options: dict[str, Any] = dict(dtype=str, keep_default_na=False)
    try:
        table = pd.read_csv(io.StringIO(text), **options)
    except pd.errors.ParserError:
        try:  # the Python engine copes with some odd quoting the C engine rejects
            table = pd.read_csv(io.StringIO(text), engine="python", **options)
        except pd.errors.ParserError:
            table = _salvage_rows(text, path, report)
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _salvage_rows(text: str, path: Path, report: _Report) -> pd.DataFrame:
    """Rows of a CSV whose quoting is broken somewhere: each record (quotes balanced, as many
    fields as the header) is kept; a line that starts no such record is dropped and counted."""
    lines = text.replace("\r\n", "\n").split("\n")
    header = next(csv.reader([lines[0]]), [])
    rows: list[list[str]] = []
    lost: list[int] = []
    i = 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        end, record = i, lines[i]
        while record.count('"') % 2 and end + 1 < len(lines) and end - i < _MAX_RECORD_LINES:
            end += 1
            record += "\n" + lines[end]
        fields = next(csv.reader([record]), []) if record.count('"') % 2 == 0 else []
        if len(fields) == len(header):
            rows.append(fields)
            i = end + 1
        else:
            lost.append(i + 1)
            i += 1
    report.stats["segmentation_rows_unparseable"] += len(lost)
    report.warn(f"segmentation file {str(path)!r}: {len(lost)} row(s) with broken CSV quoting "
                f"dropped (line(s) {', '.join(map(str, lost[:10]))}); the other rows are kept")
    return pd.DataFrame(rows, columns=header, dtype=str)


def _number(text: str, default: float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return default
    return value if np.isfinite(value) else default


def _parse(text: str, column: str, path: Path, mask: _SliceMask) -> tuple[Polygon, ...]:
    """Parse one field; a malformed one is noted on the slice (its mask becomes unknown)."""
    try:
        return polygons.parse_polygons(text)
    except polygons.PolygonError as err:
        mask.malformed.append(f"{path.name}: {column}: {err}")
        return ()


def _detection(table: pd.DataFrame, path: Path, masks: dict[str, _SliceMask]) -> None:
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in table.to_dict("records"):
        groups[_strip_suffix(row["Origin"])].append(row)
    for slice_id, rows in groups.items():
        mask = masks.setdefault(slice_id, _SliceMask())
        candidates = []
        for index, row in enumerate(rows):
            correct = _parse(row["Correct Label"], "Correct Label", path, mask)
            if correct:
                agreement = _number(row["Agreement"], -np.inf)
                reads = _number(row["Total Qualified Reads"], -np.inf)
                candidates.append((agreement, reads, -index, correct))
        if candidates:
            mask.add(max(candidates, key=lambda c: c[:3])[3], "correct")
            continue
        majority: list[Polygon] = []
        for row in rows:
            majority.extend(_parse(row["Majority Label"], "Majority Label", path, mask))
        if majority:
            mask.add(majority, "majority")


def _tracing(table: pd.DataFrame, path: Path, masks: dict[str, _SliceMask]) -> None:
    for row in table.to_dict("records"):
        slice_id = _strip_suffix(row["Origin"])
        mask = masks.setdefault(slice_id, _SliceMask())
        found = _parse(row["ROI"], "ROI", path, mask)
        if found:
            mask.add(found, "tracing")


def _read_segmentation(root: Path, report: _Report) -> dict[str, _SliceMask]:
    masks: dict[str, _SliceMask] = {}
    for path in _segmentation_files(root, report):
        header = _csv_header(path)
        if "Majority Label" in header:
            kind, required, reader = "Detection", DETECTION_REQUIRED, _detection
        elif "ROI" in header:
            kind, required, reader = "Tracing", TRACING_REQUIRED, _tracing
        else:
            if path.name.startswith("Results_"):
                detail = "header has neither 'Majority Label' (Detection) nor 'ROI' (Tracing)"
                report.skip(path.name, "bad-segmentation-csv", detail, str(path))
                report.warn(f"ignored segmentation file {str(path)!r}: {detail}")
            continue
        missing = [c for c in required if c not in header]
        if missing:
            detail = f"{kind} file lacks required column(s) {', '.join(missing)}"
            report.skip(path.name, "bad-segmentation-csv", detail, str(path))
            report.warn(f"ignored segmentation file {str(path)!r}: {detail}")
            continue
        try:
            table = _read_segmentation_csv(path, report)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as err:
            report.skip(path.name, "bad-segmentation-csv", f"unreadable CSV: {err}", str(path))
            report.warn(f"ignored unreadable segmentation file {str(path)!r}: {err}")
            continue
        report.stats["segmentation_files"] += 1
        report.stats[f"segmentation_files:{kind.lower()}"] += 1
        report.stats["segmentation_rows"] += len(table)
        if "Labeling State" in table.columns:
            flagged = table["Labeling State"].str.strip().str.lower() == "flagged"
            report.stats["segmentation_rows_flagged"] += int(flagged.sum())
            table = table[~flagged]
        table = table[table["Origin"].str.strip() != ""]
        reader(table, path, masks)
    report.stats["segmentation_slices"] = sum(1 for m in masks.values() if m.polygons)
    return masks


# --- DICOMs -----------------------------------------------------------------------------------


def _scan_dicoms(root: Path, report: _Report) -> dict[str, str]:
    """File stem -> path of every ``*.dcm`` under root (``renders/`` is not walked)."""
    found: dict[str, str] = {}
    def unreadable(err: OSError) -> None:
        report.warn(f"ignored unreadable folder {err.filename!r} while looking for DICOMs: "
                    f"{err.strerror or err}", kind="unreadable-folder")

    for directory, dirnames, filenames in drop_io.walk(root, onerror=unreadable):
        if directory == str(root):
            dirnames[:] = [d for d in dirnames if d != RENDERS_DIR]
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(".dcm"):
                continue
            report.stats["dicom_files"] += 1
            path = os.path.join(directory, name)
            stem = name[:-4]
            if stem in found:
                report.warn(f"{stem}: two DICOMs, kept {found[stem]!r}, ignored {path!r}",
                            kind="duplicate-dicom")
                continue
            found[stem] = path
    return found


def _read_header_chunk(paths: Sequence[str]) -> list[dicom.DicomMeta | str]:
    """Worker task: each header's metadata, or the reason it could not be read."""
    out: list[dicom.DicomMeta | str] = []
    for path in paths:
        try:
            out.append(dicom.read_meta(path))
        except dicom.DicomReadError as err:
            out.append(err.reason)
    return out


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_headers(
    paths: Sequence[str], workers: int = 1, progress: bool = False
) -> dict[str, dicom.DicomMeta | str]:
    """Read many DICOM headers, in `workers` processes when there are enough of them.

    Args:
      paths: DICOM file paths.
      workers: process count; 1 reads in this process.
      progress: show a tqdm bar.

    Returns:
      path -> `DicomMeta`, or the reason (str) the header could not be read.
    """
    results: dict[str, dicom.DicomMeta | str] = {}
    chunks = list(_chunks(list(paths), HEADER_CHUNK))
    bar = tqdm(total=len(paths), desc="DICOM headers", unit="file", disable=not progress)
    with bar:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                results.update(zip(chunk, _read_header_chunk(chunk)))
                bar.update(len(chunk))
            return results
        # spawn: the caller may hold TensorFlow threads, which fork does not survive.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(  # + a URL drop's filesystem (a plugin too)
                workers, mp_context=context, initializer=drop_io.import_modules,
                initargs=(drop_io.filesystem_modules(),)) as pool:
            for chunk, metas in zip(chunks, pool.map(_read_header_chunk, chunks)):
                results.update(zip(chunk, metas))
                bar.update(len(chunk))
    return results


# --- cases ------------------------------------------------------------------------------------


def _folder_disagrees(folder_type: str, labels: tuple[int, ...]) -> bool:
    named = dict(zip(schema.LABEL_NAMES, labels))
    if folder_type == "normal":
        return named["any"] != 0
    if folder_type == "multi":
        return sum(named[t] for t in schema.TYPE_NAMES) < 2
    return named.get(folder_type, 0) != 1


def _mask_for(
    slice_id: str, masks: Mapping[str, _SliceMask], report: _Report
) -> tuple[tuple[Polygon, ...] | None, str]:
    """(polygons, mask_source) from the segmentation CSVs; (None, "") when unknown."""
    mask = masks.get(slice_id)
    if mask is None:
        return None, ""
    if mask.malformed:
        report.skip(slice_id, "malformed-polygon", "; ".join(mask.malformed))
        return None, ""
    if not mask.polygons:
        return None, ""
    return tuple(mask.polygons), mask.source


def _known_empty(
    slice_id: str,
    why: str,
    labels: tuple[int, ...] | None,
    polygons_: tuple[Polygon, ...] | None,
    masks: Mapping[str, _SliceMask],
    report: _Report,
) -> tuple[tuple[Polygon, ...] | None, str]:
    """Known-empty mask for a no-bleed slice, unless its labels or a CSV contradict it."""
    if polygons_:
        report.warn(f"{slice_id}: {why} but a segmentation CSV traces a region; mask unknown",
                    kind="empty-mask-conflict")
        return None, ""
    if slice_id in masks and masks[slice_id].malformed:
        return None, ""
    if labels is not None and labels[0] != 0:
        return None, ""  # labels say bleed: an empty mask would be wrong
    return (), "normal"


def _check_folder(slice_id: str, folder_type: str, labels: tuple[int, ...] | None,
                  report: _Report) -> None:
    if labels is None or not _folder_disagrees(folder_type, labels):
        return
    report.stats["folder_label_mismatch"] += 1
    positive = [n for n, v in zip(schema.LABEL_NAMES, labels) if v] or ["none"]
    report.warn(
        f"{slice_id}: folder {folder_type!r} disagrees with its labels ({', '.join(positive)})",
        kind="folder-label-mismatch",
    )


def _note_header_problems(slice_id: str, meta: dicom.DicomMeta | str | None,
                          report: _Report) -> None:
    """Count and warn header values `dicom` dropped as nonsense (PixelSpacing inf, ...)."""
    if isinstance(meta, dicom.DicomMeta) and meta.problems:
        report.stats["dicom_header_values_dropped"] += 1
        report.warn(f"{slice_id}: DICOM {'; '.join(meta.problems)}", kind="dicom-header-value")


def _meta_fields(meta: dicom.DicomMeta | str | None) -> dict[str, Any]:
    if not isinstance(meta, dicom.DicomMeta):
        return {}
    return {
        "patient_id": meta.patient_id,
        "study_id": meta.study_id,
        "series_id": meta.series_id,
        "pixel_spacing": meta.pixel_spacing,
        "position": meta.position,
    }


def _render_cases(
    found: Mapping[str, Mapping[str, Mapping[str, str]]],
    labels: Mapping[str, tuple[int, ...]],
    flagged: set[str],
    masks: Mapping[str, _SliceMask],
    dicoms: Mapping[str, str],
    headers: Mapping[str, dicom.DicomMeta | str],
    report: _Report,
) -> list[Case]:
    cases = []
    for slice_id in sorted(found):
        by_type = found[slice_id]
        if len(by_type) > 1:
            report.skip(slice_id, "duplicate-id",
                        f"in several type folders ({', '.join(sorted(by_type))}); kept in none")
            continue
        (folder_type, windows), = by_type.items()
        if slice_id in flagged:
            report.skip(slice_id, "flagged", f"listed in {FLAGGED_FILE}")
            continue
        missing = [w for w in WINDOW_NAMES if w not in windows]
        if missing:
            some = next(iter(windows.values()))
            report.skip(slice_id, "missing-window", f"no {', '.join(missing)} render", some)
            continue
        slice_labels = labels.get(slice_id)
        _check_folder(slice_id, folder_type, slice_labels, report)
        polygons_, source = _mask_for(slice_id, masks, report)
        if folder_type == "normal":
            polygons_, source = _known_empty(
                slice_id, "folder 'normal'", slice_labels, polygons_, masks, report
            )
        dicom_path = dicoms.get(slice_id)
        meta = headers.get(dicom_path) if dicom_path else None
        if isinstance(meta, str):
            report.stats["dicom_headers_unreadable"] += 1
            report.warn(f"{slice_id}: DICOM header unreadable ({meta}); no patient/spacing",
                        kind="unreadable-dicom-header")
        _note_header_problems(slice_id, meta, report)
        cases.append(Case(
            id=slice_id,
            source="render",
            render_paths={w: windows[w] for w in WINDOW_NAMES},
            dicom_path=dicom_path,
            folder_type=folder_type,
            labels=slice_labels,
            polygons=polygons_,
            mask_source=source,
            **_meta_fields(meta),
        ))
    return cases


def _dicom_cases(
    dicoms: Mapping[str, str],
    labels: Mapping[str, tuple[int, ...]],
    flagged: set[str],
    masks: Mapping[str, _SliceMask],
    headers: Mapping[str, dicom.DicomMeta | str],
    report: _Report,
) -> list[Case]:
    cases = []
    for slice_id in sorted(dicoms):
        path = dicoms[slice_id]
        if slice_id in flagged:
            report.skip(slice_id, "flagged", f"listed in {FLAGGED_FILE}", path)
            continue
        meta = headers.get(path)
        if not isinstance(meta, dicom.DicomMeta):
            report.skip(slice_id, "unreadable-dicom", str(meta), path)
            continue
        _note_header_problems(slice_id, meta, report)
        slice_labels = labels.get(slice_id)
        polygons_, source = _mask_for(slice_id, masks, report)
        if slice_labels is not None and slice_labels[0] == 0:
            polygons_, source = _known_empty(
                slice_id, "labelled any = 0", slice_labels, polygons_, masks, report
            )
        cases.append(Case(
            id=slice_id,
            source="dicom",
            dicom_path=path,
            labels=slice_labels,
            polygons=polygons_,
            mask_source=source,
            **_meta_fields(meta),
        ))
    return cases


def _case_stats(cases: Sequence[Case], stats: Counter[str]) -> None:
    stats["cases"] = len(cases)
    stats["with_labels"] = sum(c.labels is not None for c in cases)
    stats["with_mask"] = sum(c.polygons is not None for c in cases)
    stats["with_polygons"] = sum(bool(c.polygons) for c in cases)
    stats["with_dicom"] = sum(c.dicom_path is not None for c in cases)
    stats["with_patient"] = sum(bool(c.patient_id) for c in cases)
    for case in cases:
        if case.folder_type:
            stats[f"folder:{case.folder_type}"] += 1
        if case.mask_source:
            stats[f"mask_source:{case.mask_source}"] += 1
        if case.labels is not None:
            for name, value in zip(schema.LABEL_NAMES, case.labels):
                stats[f"label:{name}"] += value


def _refuse_misnamed_renders(root: Path) -> None:
    """With source "auto", something that looks like a misnamed ``renders/`` must not silently
    switch the build to DICOM (most render slices have no DICOM: they would be lost).

    Raises:
      DropError: ``renders`` exists but is not a usable folder, or another entry whose name
        starts with "render" (any case: ``Renders/``, ``render/``, ``renders 2020/``) does.
    """
    renders = root / RENDERS_DIR
    if renders.is_dir():
        return
    if drop_io.lexists(renders):
        found = f"{str(renders)!r} exists but is not a usable folder (a file or a broken link)"
    else:
        try:
            names = drop_io.listdir(root)
        except OSError:
            return
        # "Renders", "render", "renders 2020", "renders.old" ...: any name starting so.
        lookalikes = sorted(n for n in names if n != RENDERS_DIR and n.strip().lower().startswith("render"))
        if not lookalikes:
            return
        found = f"found {', '.join(repr(n) for n in lookalikes)} but no {RENDERS_DIR!r} folder"
    raise DropError(
        f"{found} in {str(root)!r}: rename it to {RENDERS_DIR}/ to build from the renders, or "
        "pass --source dicom to build from the DICOM slices on purpose"
    )


def discover(
    root: Path,
    source: str = "auto",
    workers: int = 1,
    strict: bool = False,
    progress: bool = False,
    read_dicom_headers: bool = True,
) -> Drop:
    """Find every slice of a drop and what is known about it.

    Args:
      root: the drop folder (``renders/``, ``hemorrhage-labels.csv``, ``flagged.txt``,
        segmentation CSVs, DICOMs; see the module docstring for every rule).
      source: "render", "dicom" or "auto" ("render" when ``renders/`` exists).
      workers: processes for reading DICOM headers.
      strict: raise `DropError` at the first skip or warning instead of collecting it.
      progress: show tqdm progress bars.
      read_dicom_headers: for render cases, read matching DICOM headers for patient, study,
        series, pixel spacing and position (DICOM cases always read theirs).

    Returns:
      The `Drop`. ``stats`` counts: render_files, ignored_files, slices, cases, with_labels,
      with_mask (polygons known), with_polygons (non-empty), with_dicom, with_patient,
      ``folder:<type>``, ``label:<name>`` (positives), ``mask_source:<source>``,
      ``skipped:<reason>``, folder_label_mismatch, label_rows(_invalid, _duplicate),
      segmentation_files, segmentation_rows(_flagged), segmentation_slices, dicom_files, ...

    Raises:
      DropError: missing root, missing or unusable labels file, no ``renders/`` for source
        "render", an unknown source, or any problem in strict mode.
    """
    root = drop_io.as_root(root)  # a URL (--engine beam): listed once through FileSystems
    if source not in SOURCES:
        raise DropError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    if not root.is_dir():
        raise DropError(f"drop folder {str(root)!r} does not exist or is not a folder")
    renders = root / RENDERS_DIR
    if source == "auto":
        _refuse_misnamed_renders(root)
        source = "render" if renders.is_dir() else "dicom"
    if source == "render" and not renders.is_dir():
        raise DropError(f"no {RENDERS_DIR}/ folder in {str(root)!r}; use source 'dicom' "
                        "for a drop of raw DICOM slices")
    report = _Report(strict)
    label_table = _read_labels(root / LABELS_FILE, report)
    flagged = _read_flagged(root / FLAGGED_FILE, report)
    report.stats["flagged_ids"] = len(flagged)
    masks = _read_segmentation(root, report)
    dicoms = _scan_dicoms(root, report)

    if source == "render":
        found, window_set = _scan_renders(renders, report, progress)
        if report.stats["ignored_files"]:
            report.warn(f"ignored {report.stats['ignored_files']} file(s) under {RENDERS_DIR}/ "
                        f"that are not {' or '.join(IMAGE_SUFFIXES)} images")
        report.stats["slices"] = len(found)
        wanted = [dicoms[i] for i in found if i in dicoms] if read_dicom_headers else []
        headers = read_headers(wanted, workers, progress)
        labels = _labels_for(label_table, found)
        cases = _render_cases(found, labels, flagged, masks, dicoms, headers, report)
    else:
        window_set = "real"
        report.stats["slices"] = len(dicoms)
        headers = read_headers(list(dicoms.values()), workers, progress)
        labels = _labels_for(label_table, dicoms)
        cases = _dicom_cases(dicoms, labels, flagged, masks, headers, report)
        if not dicoms:
            report.warn(f"no *.dcm files under {str(root)!r}")
    report.stats["dicom_headers_read"] = sum(isinstance(m, dicom.DicomMeta)
                                             for m in headers.values())
    _case_stats(cases, report.stats)
    report.finish()
    return Drop(
        root=root,
        source=source,
        window_set=window_set,
        cases=cases,
        skips=report.skips,
        warnings=report.warnings,
        stats=dict(report.stats),
    )
