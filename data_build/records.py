"""Sharded, parallel, resumable TFRecord writer with a manifest; and `verify`.

`build(root, out)`:

1. `drop.discover` finds the cases (and the inputs it had to skip).
2. Each case gets a split from its group (`splits.split_of`); per split, cases are sorted by id
   and cut into shards of `shard_size` examples, ``<split>-00000-of-000NN.tfrecord``.
3. A process pool (``spawn``: workers never inherit TensorFlow) writes one shard per task: the
   worker runs `convert.make_example` over the shard's cases in order, frames the records
   (`data_build.tfrecord`), writes them to a temporary name while hashing them, and renames
   it. The main process only hands out shards and logs them, so it caps neither the worker
   count nor memory; a worker holds one record at a time, however large the drop.
4. After each shard, a line is appended to ``OUT/.progress.jsonl`` (file, examples, sha256,
   bytes, skips, counts). ``resume=True`` keeps the shards whose file and sha256 still match and
   redoes the rest; the config must match the one being resumed.
5. ``manifest.json`` is written atomically, last: a folder with a manifest is complete.

`verify(out)` re-reads every shard against the manifest.
"""
from __future__ import annotations

import collections
import datetime as _dt
import hashlib
import json
import multiprocessing
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from data_build import convert, examples, locations, schema, splits, tfrecord, windows
from data_build.cases import INTENDED_EXCLUSIONS, Case, Skip
from data_build.choices import DEFAULT_SHARD_SIZE
from data_build.errors import DataBuildError
from data_build.manifest import (
    MANIFEST_FILE,
    PROGRESS_FILE,
    Manifest,
    ManifestError,  # noqa: F401  (re-exported: callers catch records.ManifestError)
    ShardEntry,
    SplitCounts,
    presets_from_json,
)

MANIFEST = MANIFEST_FILE
PROGRESS = PROGRESS_FILE
SHARD_SUFFIX = ".tfrecord"
TMP_SUFFIX = ".tmp"


class BuildError(DataBuildError):
    """A build that cannot start or go on; the message says what to do."""


class OutputExistsError(BuildError):
    """The output folder holds a previous build and neither resume nor overwrite was asked."""


class ResumeMismatchError(BuildError):
    """`resume` was asked but the interrupted build used another config or another drop."""


class StrictStop(BuildError):
    """`strict` build stopped at the first bad input."""

    def __init__(self, skip: Skip) -> None:
        where = f" ({skip.path})" if skip.path else ""
        super().__init__(
            f"strict build stopped at {skip.id}: {skip.reason}: {skip.detail}{where}. "
            "Fix or remove that input, or build without --strict to skip and count it."
        )
        self.skip = skip


# --- reports ---------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What a build did.

    Attributes:
      out: the shard folder.
      manifest_path: its manifest.json.
      counts: per split {"slices", "with_mask", "by_type", ...} (as in the manifest).
      skips: every input left out (discovery and conversion) and every mask left unknown.
      shards_written: shards converted in this run.
      shards_reused: shards kept from an interrupted run (`resume`).
      warnings: discovery warnings.
    """

    out: Path
    manifest_path: Path
    counts: dict[str, dict[str, Any]]
    skips: list[Skip]
    shards_written: int
    shards_reused: int
    warnings: list[str] = field(default_factory=list)

    @property
    def examples(self) -> int:
        """Records written in all splits."""
        return sum(c["slices"] for c in self.counts.values())

    @property
    def written(self) -> int:
        """Records written in all splits (same as `examples`)."""
        return self.examples

    @property
    def skips_by_reason(self) -> dict[str, int]:
        """Skip counts by reason, most frequent first."""
        return dict(collections.Counter(s.reason for s in self.skips).most_common())


@dataclass
class VerifyReport:
    """What `verify` found: ``ok`` when `problems` is empty."""

    out: Path
    shards: int = 0
    examples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ShardPlan:
    file: str
    split: str
    cases: tuple[Case, ...]

    @property
    def digest(self) -> str:
        """Identifies the shard's content plan: which slice ids, in which order."""
        return hashlib.sha256("\n".join(c.id for c in self.cases).encode()).hexdigest()


def shard_name(split: str, index: int, total: int) -> str:
    """``train-00003-of-00012.tfrecord``."""
    return f"{split}-{index:05d}-of-{total:05d}{SHARD_SUFFIX}"


def plan_shards(
    cases: Iterable[Case],
    shard_size: int,
    fractions: Sequence[float],
    salt: str,
    split_method: str = splits.DEFAULT_METHOD,
) -> list[_ShardPlan]:
    """Assign splits, sort by id within a split, and cut into shards (train, val, test order)."""
    cases = list(cases)
    group_labels: dict[str, list[tuple[int, ...] | None]] = {}
    for case in cases:
        group_labels.setdefault(case.group, []).append(case.labels)
    assigned = splits.assign_groups(group_labels, fractions, salt, split_method)
    by_split: dict[str, list[Case]] = {s: [] for s in splits.SPLITS}
    for case in cases:
        by_split[assigned[case.group]].append(case)
    plans = []
    for split in splits.SPLITS:
        members = sorted(by_split[split], key=lambda c: c.id)
        total = -(-len(members) // shard_size)
        for index in range(total):
            chunk = tuple(members[index * shard_size : (index + 1) * shard_size])
            plans.append(_ShardPlan(shard_name(split, index, total), split, chunk))
    return plans


# --- helpers ---------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _skip_dict(skip: Skip) -> dict[str, str]:
    return {"id": skip.id, "reason": skip.reason, "detail": skip.detail, "path": skip.path}


def _skip_from_dict(d: Mapping[str, Any]) -> Skip:
    return Skip(str(d["id"]), str(d["reason"]), str(d.get("detail", "")), str(d.get("path", "")))


def _empty_counts() -> dict[str, Any]:
    return {
        "slices": 0,
        "with_mask": 0,
        "with_labels": 0,
        "by_type": {name: 0 for name in schema.LABEL_NAMES},
        "by_folder": {},
        "image_sizes": {},
    }


def _count(counts: dict[str, Any], result: convert.Converted) -> None:
    counts["slices"] += 1
    counts["with_mask"] += int(result.has_mask)
    if result.labels is not None:
        counts["with_labels"] += 1
        for name, value in zip(schema.LABEL_NAMES, result.labels):
            counts["by_type"][name] += int(value)
    folder = result.folder_type or "unknown"
    counts["by_folder"][folder] = counts["by_folder"].get(folder, 0) + 1
    size = f"{result.height}x{result.width}"
    counts["image_sizes"][size] = counts["image_sizes"].get(size, 0) + 1


def _merge_counts(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    for key in ("slices", "with_mask", "with_labels"):
        total[key] += int(part[key])
    for key in ("by_type", "by_folder", "image_sizes"):
        for name, n in part[key].items():
            total[key][name] = total[key].get(name, 0) + int(n)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("fusion", "tensorflow", "numpy", "opencv-python-headless", "pydicom"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _presets_dict(presets: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """Window name -> [level, width], every canonical window, overrides applied."""
    merged = {name: [w.level, w.width] for name, w in windows.PRESETS.items()}
    for name, value in (presets or {}).items():
        canonical = windows.canonical_window_name(name)
        if canonical is None:
            raise BuildError(
                f"unknown window {name!r} in presets; expected one of {', '.join(windows.WINDOW_NAMES)}"
            )
        if isinstance(value, windows.Window):
            level, width = value.level, value.width
        else:
            level, width = (float(v) for v in value)
        windows.Window(level, width)  # validates width > 0
        merged[canonical] = [float(level), float(width)]
    return {name: merged[name] for name in windows.WINDOW_NAMES}


# --- output folder ---------------------------------------------------------------------------


#: The build's own temporaries (whole names, `re.fullmatch`): ``.<split>-NNNNN-of-NNNNN.tfrecord.tmp``
#: (`_write_shard`), ``.<split>-NNNNN-of-NNNNN.tfrecord.<uuid hex>.tmp`` (the Beam engine: one
#: name per attempt, `beam_out.attempt_tmp`), ``.manifest.json.<8 random>.tmp``
#: (`files.atomic_write_text`) or ``.<uuid hex>.tmp`` (Beam), ``..progress.jsonl.<uuid hex>.tmp``
#: (the Beam driver's progress log), and the Beam engine's older fixed ``.beam.tmp`` names.
#: Nothing looser: a user's ``.train-00000-of-00001.tfrecord.bak.tmp`` is not ours.
_ATTEMPT = r"\.[0-9a-f]{32}"
_OUR_TMP = re.compile(
    rf"\.(({'|'.join(splits.SPLITS)})-\d{{5}}-of-\d{{5}}\{SHARD_SUFFIX}({_ATTEMPT})?"
    rf"|({re.escape(MANIFEST)}|{re.escape(PROGRESS)})(\.[a-z0-9_]{{8}}|{_ATTEMPT}|\.beam))\{TMP_SUFFIX}",
    re.ASCII,
)


def _manifest_shard_names(path: Path) -> set[str] | None:
    """Shard names listed by OUT/manifest.json when `fusion-build` wrote it, else None (a user's
    own file, unreadable or not JSON: never deleted or replaced). A manifest of another schema
    version still counts as the build's own (`Manifest.from_dict` does not check the version,
    `Manifest.load` would), so --overwrite can replace an old build."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {s.file for s in Manifest.from_dict(data, str(path)).shards}
    except (OSError, ValueError):  # ManifestError is a ValueError
        return None


def _is_build_manifest(path: Path) -> bool:
    return _manifest_shard_names(path) is not None


def _listed_shards(out: Path) -> set[str]:
    """Shard names the folder's own manifest and progress log list (plain names only: a listed
    ``../x`` must never reach outside OUT)."""
    names = set(_read_progress(out)[1]) | (_manifest_shard_names(out / MANIFEST) or set())
    return {n for n in names if isinstance(n, str) and n.endswith(SHARD_SUFFIX) and n == Path(n).name}


def _our_files(out: Path) -> list[Path]:
    """Files a previous build wrote in OUT: its manifest and progress log, the shards they list,
    and its temporaries. Anything else (a user's own ``*.tfrecord`` ...) is never touched."""
    if not out.is_dir():
        return []
    names = _listed_shards(out) | {PROGRESS}
    if _is_build_manifest(out / MANIFEST):
        names.add(MANIFEST)
    found = [out / n for n in sorted(names) if (out / n).is_file()]
    found += [p for p in sorted(out.iterdir()) if _OUR_TMP.fullmatch(p.name) and p.is_file()]
    return found


#: The Beam engine's staging folder in OUT (`beam_engine.STAGING`): its plan, the driver's facts,
#: spill files and the skips' JSON lines, which stay after a Beam build.
BEAM_STAGING = ".beam"
_BEAM_STAGING_FILE = re.compile(r"^(plan\.jsonl|driver\.json|skipped-.*\.jsonl|spill/[^/]+)$")


def _beam_staging(out: Path) -> Path | None:
    """OUT/.beam when a Beam build left it (only the engine's own file names in it), else None:
    a folder holding anything else is not ours and is never deleted."""
    staging = out / BEAM_STAGING
    if not staging.is_dir():
        return None
    names = [p.relative_to(staging).as_posix() for p in staging.rglob("*") if not p.is_dir()]
    return staging if all(_BEAM_STAGING_FILE.match(n) for n in names) else None


def _refuse_foreign(out: Path, planned: Iterable[str]) -> None:
    """Raise when a file this build would replace was not written by a build.

    A shard name beside a build's manifest or progress log is the build's own, listed or not:
    a run killed between renaming a shard and logging it leaves exactly that.
    """
    ours = _is_build_manifest(out / MANIFEST) or _read_progress(out)[0] is not None
    foreign = [] if ours else [n for n in planned if (out / n).exists()]
    if (out / MANIFEST).exists() and not _is_build_manifest(out / MANIFEST):
        foreign.insert(0, MANIFEST)
    if foreign:
        raise BuildError(
            f"{out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which "
            "fusion-build did not write and would replace; move it away or choose another --out"
        )


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise BuildError("choose either resume or overwrite, not both")
    if out.exists() and not out.is_dir():
        raise BuildError(f"output {out} exists and is not a folder; pick another --out")
    if not out.exists():
        out.mkdir(parents=True)
        return
    ours = _our_files(out)
    if overwrite:
        for path in ours:
            path.unlink()
        staging = _beam_staging(out)
        if staging is not None:  # a Beam build's leftovers (its skips) describe the build replaced
            shutil.rmtree(staging)
        return
    if resume:
        for path in ours:  # half-written shards of the killed run
            if path.name.endswith(TMP_SUFFIX):
                path.unlink()
        return
    if ours:
        state = "a finished build" if (out / MANIFEST).exists() else "an unfinished build"
        raise OutputExistsError(
            f"{out} already holds {state} ({len(ours)} files). Use --resume to finish an "
            "interrupted build, --overwrite to replace it, or choose another --out."
        )


def _read_progress(out: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(config line, shard file -> its latest line); a torn last line (killed run) is ignored."""
    path = out / PROGRESS
    config: dict[str, Any] | None = None
    shards: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return None, shards
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if entry.get("kind") == "config":
            config = entry["config"]
        elif entry.get("kind") == "shard":
            shards[entry["file"]] = entry
    return config, shards


def _append_progress(out: Path, entry: Mapping[str, Any]) -> None:
    with open(out / PROGRESS, "a+b") as handle:
        # A run killed mid-line left a torn last line: start on a fresh one, or this entry
        # would be glued to it, unreadable, and its shard redone by the next --resume.
        size = handle.seek(0, os.SEEK_END)
        torn = False
        if size:
            handle.seek(size - 1)
            torn = handle.read(1) != b"\n"
        handle.write((("\n" if torn else "") + json.dumps(entry, sort_keys=True) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def _reusable(out: Path, plan: _ShardPlan, entry: Mapping[str, Any] | None) -> bool:
    if entry is None or entry.get("digest") != plan.digest:
        return False
    path = out / plan.file
    if not path.is_file() or path.stat().st_size != entry.get("bytes"):
        return False
    return _sha256_file(path) == entry.get("sha256")


# --- conversion ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ShardJob:
    """One shard to convert and write, as sent to a worker: paths and metadata, no pixels."""

    out: str
    plan: _ShardPlan
    options: convert.ConvertOptions
    strict: bool


#: Slices converted so far by all workers: a shared counter the main process shows as progress
#: (set in each worker by `_init_worker`; None in the main process).
_slices_done: Any = None


def _init_worker(counter: Any, parent: int) -> None:
    global _slices_done
    _slices_done = counter
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """Have Linux kill this worker when the build's main process dies (even by SIGKILL).

    A worker writes and renames shards itself: orphaned, it would finish its shard after the
    build was killed, racing a ``--resume`` started meanwhile for the same file names. Elsewhere
    than Linux this is a no-op (an orphan there ends after its current shard).
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no libc prctl (not Linux)
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _count_slice() -> None:
    with _slices_done.get_lock():
        _slices_done.value += 1


def _job_in_worker(job: _ShardJob) -> dict[str, Any] | Skip:
    """Pool task: write one whole shard (`_write_shard`) in a worker process."""
    return _write_shard(Path(job.out), job.plan, job.options, job.strict, _count_slice)


def _run_jobs(jobs: Sequence[_ShardJob], workers: int, on_slices: Callable[[int], None]
              ) -> Iterator[dict[str, Any] | Skip]:
    """`_write_shard` over jobs, results in job order, in `workers` spawned processes (1: here).

    A worker writes a whole shard: it converts, frames, writes and hashes the shard's records
    itself, and returns only its small progress entry. The main process handles no record
    bytes at all, so it caps neither the worker count nor memory (issue 14: fed record by
    record, it spent ~1 ms CPU per slice receiving, framing, writing and re-reading them).

    Args:
      on_slices: called with the slices converted since its last call (for a progress bar).
    """
    if workers <= 1:
        for job in jobs:
            yield _write_shard(Path(job.out), job.plan, job.options, job.strict, lambda: on_slices(1))
        return
    context = multiprocessing.get_context("spawn")  # workers never inherit TensorFlow
    counter = context.Value("q", 0)
    shown = 0
    pool = context.Pool(workers, initializer=_init_worker, initargs=(counter, os.getpid()))
    try:
        results = pool.imap(_job_in_worker, jobs, 1)
        while True:
            try:
                result = results.next(timeout=0.25)
            except multiprocessing.TimeoutError:
                result = None
            except StopIteration:
                break
            done = counter.value
            on_slices(done - shown)
            shown = done
            if result is not None:
                yield result
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _shard_tmp(out: Path, plan: _ShardPlan) -> Path:
    return out / f".{plan.file}{TMP_SUFFIX}"


def _write_shard(
    out: Path,
    plan: _ShardPlan,
    options: convert.ConvertOptions,
    strict: bool,
    on_case: Callable[[], None],
) -> dict[str, Any] | Skip:
    """Convert and write one shard, in plan order; return its progress entry.

    Records are framed by `data_build.tfrecord` (byte-identical to TensorFlow's writer), so a
    build never imports TensorFlow. The sha256 is computed from the bytes as they are written
    (no second read of the shard). The shard is left under its temporary name
    (`_shard_tmp`): the main process renames it when it logs the entry (`_publish`), in plan
    order, so a stopped pool build never leaves a finished shard that no log lists.

    Returns:
      The progress entry, or, for a strict build, the first bad input's `Skip` (nothing is
      then left on disk for this shard).
    """
    counts = _empty_counts()
    skips: list[Skip] = []
    digest = hashlib.sha256()
    size = 0
    tmp = _shard_tmp(out, plan)
    written = False
    try:
        with open(tmp, "wb") as writer:
            for case in plan.cases:
                result = convert.make_example(case, options)
                on_case()
                found = [result] if isinstance(result, Skip) else list(result.skips)
                if strict and found:
                    return found[0]
                skips.extend(found)
                if isinstance(result, Skip):
                    continue
                framed = tfrecord.frame(result.serialized)
                writer.write(framed)
                digest.update(framed)
                size += len(framed)
                _count(counts, result)
        written = True
    except OSError as err:  # e.g. a full disk
        raise BuildError(f"writing {tmp} failed: {err.strerror or err}. Free disk space or pick "
                         "another --out, then rerun with --resume.") from None
    finally:
        if not written and tmp.exists():
            tmp.unlink()
    return {
        "kind": "shard",
        "file": plan.file,
        "split": plan.split,
        "examples": counts["slices"],
        "sha256": digest.hexdigest(),
        "bytes": size,
        "digest": plan.digest,
        "counts": counts,
        "skips": [_skip_dict(s) for s in skips],
    }


# --- build -----------------------------------------------------------------------------------


def build(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    source: str = "auto",
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
    presets: Mapping[str, Any] | None = None,
    fractions: Sequence[float] = splits.DEFAULT_FRACTIONS,
    salt: str = splits.DEFAULT_SALT,
    split_method: str = splits.DEFAULT_METHOD,
    progress: bool = True,
) -> BuildReport:
    """Convert a drop into sharded TFRecords plus ``manifest.json``.

    Args:
      root: the drop (see shared/docs/dataset-format.md).
      out: shard folder; created if needed, nothing is written before the drop is read.
      source: "auto", "render" or "dicom" (passed to `drop.discover`).
      workers: conversion processes; default all cores; 1 converts in this process. Workers
        are spawned, so a script calling `build` with workers > 1 needs the usual
        ``if __name__ == "__main__":`` guard.
      shard_size: examples per shard (> 0).
      resume: finish an interrupted build in `out` (same config and drop required).
      overwrite: replace a previous build in `out` (only the build's own files are removed).
      strict: stop at the first bad input instead of skipping and counting it.
      presets: window name -> (level, width) HU or `windows.Window`, overriding `windows.PRESETS`.
      fractions: (train, val, test) fractions of groups.
      salt: split salt (a different salt = a different, equally valid split).
      split_method: "stratified" (default: balance hemorrhage types across splits) or "hash"
        (a group's split never changes as the drop grows); see `splits`.
      progress: show tqdm bars.

    Returns:
      `BuildReport`.

    Raises:
      cases.DropError: missing root or labels file (nothing written).
      OutputExistsError, ResumeMismatchError, StrictStop, BuildError, splits.SplitError.
    """
    from data_build import drop as drop_module  # imported late: `--help` stays fast

    root, out = Path(root), Path(out)
    _check_options(shard_size, resume, overwrite)
    if out.is_dir() and not resume and not overwrite and _our_files(out):
        _prepare_out(out, resume, overwrite)  # raises OutputExistsError before the long scan
    workers = max(1, int(workers or _available_cores()))
    # Discovery collects every skip; `write_drop` turns the first into `StrictStop` when
    # strict, so a strict stop is never confused with a missing root or labels file
    # (`DropError`, exit status 2).
    drop = drop_module.discover(root, source=source, workers=workers, strict=False, progress=progress)
    return write_drop(
        drop,
        out,
        workers=workers,
        shard_size=shard_size,
        resume=resume,
        overwrite=overwrite,
        strict=strict,
        presets=presets,
        fractions=fractions,
        salt=salt,
        split_method=split_method,
        progress=progress,
    )


#: Images smaller than this (pixels, either side) are warned: too small for the model's presets.
MIN_WARN_SIDE = 128


def _output_warnings(
    counts: Mapping[str, Mapping[str, Any]], sizes: Mapping[str, int]
) -> list[str]:
    """What about the written shards would surprise a user at training time.

    Args:
      counts: per split, the manifest's counts ("slices").
      sizes: "HxW" -> number of slices of that size, all splits.
    """
    out = []
    for split in splits.SPLITS[1:]:
        if not counts[split]["slices"]:
            out.append(f"split {split!r} is empty: fusion-train needs val slices to pick its "
                       "best epoch and thresholds, fusion-evaluate a test split; use more patients "
                       "or other --split-fractions" if split == "val" else
                       f"split {split!r} is empty: nothing is held out for fusion-evaluate; use "
                       "more patients or other --split-fractions")
    for size, n in sorted(sizes.items()):
        height, width = (int(v) for v in size.split("x"))
        why = [w for w, bad in (("not square", height != width),
                                (f"smaller than {MIN_WARN_SIDE} px", min(height, width) < MIN_WARN_SIDE))
               if bad]
        if why:
            out.append(f"{n} slice(s) are {size} ({' and '.join(why)}): the reader resizes every "
                       "slice to a square image_size, distorting or blowing them up; check the renders")
    return out


def _available_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_options(shard_size: int, resume: bool, overwrite: bool) -> None:
    if shard_size <= 0:
        raise BuildError(f"shard_size must be a positive number of examples, got {shard_size}")
    if resume and overwrite:
        raise BuildError("choose either resume or overwrite, not both")


def write_drop(
    drop: Any,
    out: str | os.PathLike[str],
    *,
    workers: int | None = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
    presets: Mapping[str, Any] | None = None,
    fractions: Sequence[float] = splits.DEFAULT_FRACTIONS,
    salt: str = splits.DEFAULT_SALT,
    split_method: str = splits.DEFAULT_METHOD,
    progress: bool = True,
) -> BuildReport:
    """Write shards and manifest for an already discovered drop (`build` without discovery).

    Args:
      drop: a `drop.Drop` or any object with root, source, cases, skips, warnings (and
        optionally window_set, stats).
      Others as `build`.
    """
    out = Path(out)
    _check_options(shard_size, resume, overwrite)
    fractions = splits.check_fractions(fractions)
    presets_json = _presets_dict(presets)
    workers = max(1, int(workers or _available_cores()))
    _check_drop(drop, strict)
    plans = plan_shards(drop.cases, shard_size, fractions, salt, split_method)
    config = _build_config(drop.source, shard_size, fractions, salt, split_method, presets_json, plans)
    _refuse_foreign(out, [p.file for p in plans])
    previous_shards = _listed_shards(out)  # before the old manifest and log are replaced
    done = _start_or_resume(out, config, resume, overwrite)
    entries, todo = _reusable_entries(out, plans, done, previous_shards)
    options = convert.ConvertOptions(
        source=drop.source, presets={k: tuple(v) for k, v in presets_json.items()}
    )
    _convert_and_write(out, todo, entries, options, workers, strict, progress)
    ordered = [entries[p.file] for p in plans]
    manifest = _manifest(drop, ordered, {**config, "workers": workers, "strict": strict})
    manifest.save(out)
    return BuildReport(
        out=out,
        manifest_path=out / MANIFEST,
        counts={name: c.to_dict() for name, c in manifest.counts.items()},
        skips=list(manifest.skipped),
        shards_written=len(todo),
        shards_reused=len(plans) - len(todo),
        warnings=list(manifest.warnings),
    )


def _check_drop(drop: Any, strict: bool) -> None:
    problems = [s for s in drop.skips if s.reason not in INTENDED_EXCLUSIONS]
    if strict and problems:  # a flagged slice is an intended exclusion, not a problem
        raise StrictStop(problems[0])
    if drop.source not in convert.SOURCES:
        raise BuildError(f"drop source {drop.source!r} is not one of {convert.SOURCES}")
    if not drop.cases:
        reasons = collections.Counter(s.reason for s in drop.skips)
        raise BuildError(
            f"no slices to convert in {drop.root} (skipped at discovery: "
            f"{dict(reasons) or 'none'}); check that it holds renders/<type>/<window>/<ID>.jpg "
            "or DICOM slices"
        )


def _build_config(
    source: str, shard_size: int, fractions: Sequence[float], salt: str, split_method: str,
    presets_json: Mapping[str, list[float]], plans: Sequence[_ShardPlan],
) -> dict[str, Any]:
    """What a resumed build must share with the interrupted one (the progress log's first line)."""
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "source": source,
        "shard_size": shard_size,
        "fractions": list(fractions),
        "salt": salt,
        "split_method": split_method,
        "split_version": splits.ALGORITHM_VERSION,
        "presets": dict(presets_json),
        "plan": hashlib.sha256(
            "\n".join(f"{p.file}:{p.digest}" for p in plans).encode()
        ).hexdigest(),
    }


def _start_or_resume(
    out: Path, config: Mapping[str, Any], resume: bool, overwrite: bool
) -> dict[str, dict[str, Any]]:
    """Prepare OUT and the progress log. Returns the finished shards' entries of a resumed build."""
    _prepare_out(out, resume, overwrite)
    previous_config, done = _read_progress(out) if resume else (None, {})
    if resume and previous_config is not None and previous_config != config:
        changed = sorted(k for k in config if previous_config.get(k) != config[k])
        raise ResumeMismatchError(
            f"cannot resume {out}: the interrupted build differs in {', '.join(changed)} "
            "(a changed drop changes 'plan'; 'split_version' means it was started by a fusion "
            "version that assigns splits differently). Rerun with the same options and "
            "version, or --overwrite."
        )
    if (out / MANIFEST).exists():
        # From here on the shards may change: a folder without a manifest reads as unfinished.
        (out / MANIFEST).unlink()
    if not resume or previous_config is None:
        progress_path = out / PROGRESS
        if progress_path.exists():
            progress_path.unlink()
        _append_progress(out, {"kind": "config", "config": config})
    return done if resume else {}


def _reusable_entries(
    out: Path, plans: Sequence[_ShardPlan], done: Mapping[str, dict[str, Any]],
    previous_shards: set[str],
) -> tuple[dict[str, dict[str, Any]], list[_ShardPlan]]:
    """(entries of shards kept from an interrupted run, plans still to write); drops the stale
    shards among `previous_shards` (those the previous build listed; nothing else)."""
    entries: dict[str, dict[str, Any]] = {}
    todo: list[_ShardPlan] = []
    for plan in plans:
        if _reusable(out, plan, done.get(plan.file)):
            entries[plan.file] = done[plan.file]
        else:
            todo.append(plan)
    planned = {p.file for p in plans}
    for name in sorted(previous_shards - planned):  # e.g. another shard count in an older plan
        if (out / name).is_file():
            (out / name).unlink()
    return entries, todo


def _convert_and_write(
    out: Path, todo: Sequence[_ShardPlan], entries: dict[str, dict[str, Any]],
    options: convert.ConvertOptions, workers: int, strict: bool, progress: bool,
) -> None:
    """Convert and write the planned shards, one shard per worker at a time, logging each
    finished shard in plan order (so a strict build stops at the same input for any worker
    count)."""
    from tqdm import tqdm

    n_todo = sum(len(p.cases) for p in todo)
    bar = tqdm(total=n_todo, unit="slice", desc=f"converting ({options.source})", disable=not progress)
    jobs = [_ShardJob(str(out), plan, options, strict) for plan in todo]
    results = _run_jobs(jobs, min(workers, len(jobs)), bar.update)
    try:
        for plan, entry in zip(todo, results):
            if isinstance(entry, Skip):
                raise StrictStop(entry)
            _publish(out, plan)
            _append_progress(out, entry)
            entries[plan.file] = entry
    finally:
        results.close()  # stops and joins the pool on errors too
        bar.close()
        for plan in todo:  # shards the stopped workers were writing, or wrote but never logged
            _shard_tmp(out, plan).unlink(missing_ok=True)


def _publish(out: Path, plan: _ShardPlan) -> None:
    """Rename a worker's finished shard to its name (just before its progress line)."""
    try:
        os.replace(_shard_tmp(out, plan), out / plan.file)
    except OSError as err:
        raise BuildError(f"renaming the finished shard {plan.file} in {out} failed: "
                         f"{err.strerror or err}; rerun with --resume") from None


def _manifest(drop: Any, ordered: Sequence[Mapping[str, Any]], config: dict[str, Any]) -> Manifest:
    """The manifest of a finished build from its shards' progress entries, in plan order."""
    skips = list(drop.skips) + [_skip_from_dict(s) for e in ordered for s in e["skips"]]
    counts = {s: _empty_counts() for s in splits.SPLITS}
    for entry in ordered:
        _merge_counts(counts[entry["split"]], entry["counts"])
    all_sizes: collections.Counter[str] = collections.Counter()
    for c in counts.values():
        all_sizes.update(c["image_sizes"])
    size = all_sizes.most_common(1)[0][0].split("x") if all_sizes else None
    return Manifest(
        schema_version=schema.SCHEMA_VERSION,
        source=drop.source,
        presets=presets_from_json(config["presets"]),
        counts={name: SplitCounts.from_dict(c) for name, c in counts.items()},
        shards=tuple(ShardEntry(e["file"], e["split"], e["examples"], e["sha256"], e["bytes"])
                     for e in ordered),
        image_size=(int(size[0]), int(size[1])) if size else None,
        skipped=tuple(skips),
        skipped_by_reason=dict(collections.Counter(s.reason for s in skips).most_common()),
        warnings=tuple(drop.warnings) + tuple(_output_warnings(counts, all_sizes)),
        drop={
            "root": str(drop.root) if locations.is_url(str(drop.root)) else str(Path(drop.root).resolve()),
            "source": drop.source,
            "window_set": getattr(drop, "window_set", None),
            "stats": getattr(drop, "stats", {}),
        },
        config=config,
        versions=_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


# --- verify ----------------------------------------------------------------------------------


def _check_record(values: Mapping[str, Any], index: int) -> list[str]:
    """Problems of one parsed record (images decode, sizes agree)."""
    problems = []
    rid = values["id"] or f"#{index}"
    height, width = int(values["height"]), int(values["width"])

    def decode(key: str, flags: int) -> np.ndarray | None:
        data = values[key]
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
        if image is None:
            problems.append(f"record {rid}: {key} does not decode")
        elif image.shape[:2] != (height, width):
            problems.append(f"record {rid}: {key} is {image.shape[:2]}, record says {(height, width)}")
        return image

    if values["source"] == "dicom":
        hu = decode("image/hu", cv2.IMREAD_UNCHANGED)
        if hu is not None and hu.dtype != np.uint16:
            problems.append(f"record {rid}: image/hu is {hu.dtype}, expected uint16 PNG")
    else:
        for name in windows.WINDOW_NAMES:
            # The build's own check: what the training reader's decoder refuses or garbles.
            key = schema.image_key(name)
            try:
                size = convert.check_jpeg_bytes(bytes(values[key]))
            except convert.JpegError as err:
                problems.append(f"record {rid}: {key}: {err}")
                continue
            if size != (height, width):
                problems.append(f"record {rid}: {key} is {size}, record says {(height, width)}")
    if values["has_mask"]:
        decode("mask", cv2.IMREAD_GRAYSCALE)
    return problems


def _check_shard(path: Path, expected: int) -> tuple[int, list[str]]:
    """Read one shard without TensorFlow (framing and both CRC32Cs checked, every record parsed
    with the schema and its images decoded). Returns (records read, problems)."""
    problems: list[str] = []
    count = 0
    try:
        for record in tfrecord.read_records(path):
            try:
                values = examples.parse_example(record)
            except examples.SchemaError as err:
                problems.append(f"{path.name}: record {count} does not parse with the schema ({err})")
            else:
                values["id"] = values["id"].decode("utf-8", "replace")
                values["source"] = values["source"].decode("utf-8", "replace")
                problems.extend(f"{path.name}: {p}" for p in _check_record(values, count))
            count += 1
    except tfrecord.CorruptRecordError as err:
        problems.append(f"{path.name}: unreadable after {count} records ({err})")
    if count != expected:
        problems.append(f"{path.name}: {count} records, manifest says {expected}")
    return count, problems


def verify(out: str | os.PathLike[str], progress: bool = False) -> VerifyReport:
    """Re-read every shard of a build and check it against its manifest.

    Checks each shard's presence, size and sha256, that every record parses with
    `schema.feature_spec`, that images and masks decode at the size the record states, record
    counts per shard and per split, and that no unlisted shard lies in the folder.

    Raises:
      ManifestError: no readable manifest (nothing to verify against).
    """
    out = Path(out)
    manifest = Manifest.load(out)
    report = VerifyReport(out=out)
    listed = {s.file for s in manifest.shards}
    for extra in sorted(p.name for p in out.glob(f"*{SHARD_SUFFIX}") if p.name not in listed):
        report.problems.append(f"{extra}: shard not listed in the manifest")
    per_split: collections.Counter[str] = collections.Counter()
    from tqdm import tqdm

    for shard in tqdm(manifest.shards, desc="verifying", unit="shard", disable=not progress):
        path = out / shard.file
        report.shards += 1
        if not path.is_file():
            report.problems.append(f"{shard.file}: missing")
            continue
        size = path.stat().st_size
        if size != shard.bytes:
            report.problems.append(f"{shard.file}: {size} bytes, manifest says {shard.bytes}")
        if _sha256_file(path) != shard.sha256:
            report.problems.append(f"{shard.file}: sha256 differs from the manifest")
        count, problems = _check_shard(path, shard.examples)
        report.examples += count
        per_split[shard.split] += count
        report.problems.extend(problems)
    for split, counts in manifest.counts.items():
        if per_split[split] != counts.slices:
            report.problems.append(
                f"split {split}: {per_split[split]} records in shards, manifest counts {counts.slices}"
            )
    return report
