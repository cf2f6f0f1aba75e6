"""``fusion-train --cache DIR``: the decoded records of a split, memory-mapped, for every epoch.

Each epoch of `fusion.reader` parses every record and decodes four JPEGs (and a mask PNG) per
slice; the cache does that once. It holds what the reader decodes *before* augmentation and
before the float32 colour-map lookup, in uint8 at the training size:

- ``codes.npy``: [N, S, S, 4] uint8, the windows' JPEG codes (`fusion.reader.decode_record`);
- ``mask.npy``: [N, S, S, 1] uint8 0/1;
- ``rows.npz``: per slice, the grey table of each window [N, 4] uint8, the targets and flags
  (float32, as `fusion.reader.targets`) and the ids;
- ``cache.json``: the identity below, written last.

N slices at S px take N x S x S x 5 bytes (1.3 MB a slice at 512 px, 0.33 MB at 256). The
arrays are `.npy` files opened with `np.lib.format.open_memmap`: epochs read them through the
page cache, and worker threads or forked processes share them.

**Identity.** A cache is keyed on the split, the image size, `fusion.reader.READER_VERSION`,
this module's `CACHE_FORMAT` and the split's shards as the manifest lists them (file, record
count, sha256, bytes; size and mtime of the file where an old manifest has no sha256). A
folder whose key differs (rebuilt shards, another reader) is stale: it is rebuilt, with a
line that says why. The folder is DIR/<split>-<S>px, so one DIR serves several shard sets
only one at a time per split and size.

**Atomic.** A cache is built in DIR/.<split>-<S>px.partial-<pid> and renamed into place after
``cache.json`` (written last, fsynced) says it is complete: a killed build leaves only a
partial folder, which the next build removes, never a cache that looks complete.

**When.** Before the first epoch, not during it: the decode work is the same (each record
once), a complete cache is known complete before any epoch reads it, and an epoch that is cut
short (``steps_per_epoch``, a kill) or reads only some records (``masked_only``) leaves no
holes. It costs the overlap of the first epoch's decoding with its training steps, which
matters little where the cache is worth having: there the input is the bottleneck.

**Size.** The size of what is to be built is logged before it is built, and the build is
refused (`CacheError`) when DIR's disk cannot hold it (`shutil.disk_usage`).

DICOM (HU) shards are refused: their windows are float32 (and the jitter needs HU), not uint8.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from data_build.examples import parse_example
from data_build.files import atomic_write_text, ordinary_mode
from data_build.manifest import Manifest
from fusion.errors import FusionError
from fusion.reader import READER_VERSION, SplitRecords, codes_to_grey, decode_record, targets

log = logging.getLogger(__name__)

#: Layout of a cache folder; bump with any change to its files.
CACHE_FORMAT = 1
META_FILE = "cache.json"
#: The reader's float32 per-slice values, as `fusion.reader.collate` stacks them.
TARGET_KEYS = ("labels", "has_labels", "has_mask", "area_fraction", "area_mm2", "has_area",
               "has_area_mm2", "pixel_spacing", "has_spacing")
#: Free space left over on the cache's disk after a build (bytes): filling a disk to the last
#: byte breaks whatever else writes there.
HEADROOM = 64 * 2**20
#: Records decoded per task of the build's thread pool.
CHUNK = 64


class CacheError(FusionError, ValueError):
    """The decoded cache cannot be used or built (the message says what to do)."""


@dataclass(frozen=True)
class CacheSpec:
    """What one cache holds and who it belongs to.

    Attributes:
      split: "train", "val" or "test".
      image_size: S in pixels.
      count: N, the split's records.
      identity: the JSON-able values the key is made of (see the module docstring).
      key: sha256 hex of `identity`.
    """

    split: str
    image_size: int
    count: int
    identity: dict[str, Any] = field(hash=False)
    key: str = ""

    @property
    def name(self) -> str:
        """The cache folder's name in DIR."""
        return f"{self.split}-{self.image_size}px"

    @property
    def nbytes(self) -> int:
        """Bytes on disk: codes, mask, and ~100 bytes of table, targets and id per slice."""
        side = self.image_size
        return self.count * (side * side * 5 + 100) + 4096


def shard_identity(shards_dir: Path, manifest: Manifest, split: str) -> list[list[Any]]:
    """[file, records, sha256, bytes] of each shard of `split` (the manifest's word for them);
    where the manifest has no sha256, the file's size and mtime (ns) stand in."""
    out: list[list[Any]] = []
    for shard in manifest.shards_of(split):
        entry: list[Any] = [shard.file, shard.examples, shard.sha256, shard.bytes]
        if not shard.sha256:
            stat = (shards_dir / shard.file).stat()
            entry += [stat.st_size, stat.st_mtime_ns]
        out.append(entry)
    return out


def cache_spec(shards_dir: Path, manifest: Manifest, records: SplitRecords, split: str, image_size: int) -> CacheSpec:
    """The `CacheSpec` of `split` at `image_size` of the shards in `shards_dir`."""
    identity = {
        "format": CACHE_FORMAT, "reader_version": READER_VERSION, "split": split,
        "image_size": int(image_size), "records": len(records),
        "shards": shard_identity(Path(shards_dir), manifest, split),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()
    return CacheSpec(split, int(image_size), len(records), identity, key)


# --- reading a complete cache ----------------------------------------------------------------------


class DecodedSplit:
    """A complete cache folder, memory-mapped read-only; `read_batch` gives the reader's dicts.

    The arrays open on first use in each process (a pickled copy, as a spawned worker gets it,
    carries the folder only).
    """

    def __init__(self, folder: Path, spec: CacheSpec) -> None:
        self.folder, self.spec = Path(folder), spec
        self.image_size = spec.image_size
        self._arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.spec.count

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            # Checked again in each process that maps it: another run sharing DIR may have
            # rebuilt the folder for other shards since this run's check.
            reason = stale_reason(self.folder, self.spec)
            if reason is not None:
                raise CacheError(f"the decoded cache {self.folder} changed under this run: {reason}; "
                                 "give each concurrent run its own --cache DIR, then rerun with --resume")
            rows = np.load(self.folder / "rows.npz")
            arrays = {k: rows[k] for k in rows.files}
            arrays["codes"] = np.load(self.folder / "codes.npy", mmap_mode="r")
            arrays["mask"] = np.load(self.folder / "mask.npy", mmap_mode="r")
            self._arrays = arrays
        return self._arrays

    def read_batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The reader's batch dict (`fusion.reader.collate`) of the records at `rows`.

        Returns:
          image [B, S, S, 4] float32 (the colour-map lookup of the cached codes), mask
          [B, S, S, 1] float32 0/1, is_hu [B] zeros, ``TARGET_KEYS`` float32 and id [B]
          bytes (object): equal bit for bit to what `fusion.reader` decodes from the shards.
        """
        a = self._open()
        rows = np.asarray(rows, np.int64)
        out: dict[str, np.ndarray] = {key: a[key][rows] for key in TARGET_KEYS}
        out["id"] = np.array([bytes(i) for i in a["id"][rows]], dtype=object)
        out["mask"] = a["mask"][rows].astype(np.float32)
        out["image"] = codes_to_grey(a["codes"][rows], a["table"][rows])
        out["is_hu"] = np.zeros(len(rows), np.float32)
        return out


def read_meta(folder: Path) -> dict[str, Any] | None:
    """A cache folder's cache.json, None when it is missing or unreadable."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def stale_reason(folder: Path, spec: CacheSpec) -> str | None:
    """Why the cache in `folder` cannot serve `spec` (None: it can)."""
    meta = read_meta(folder)
    if meta is None or not meta.get("complete"):
        return "it is incomplete (no finished cache.json)"
    if meta.get("key") != spec.key:
        old = meta.get("identity", {})
        what = [name for name in ("format", "reader_version", "records", "shards")
                if old.get(name) != spec.identity[name]]
        return f"it was made from other data ({', '.join(what) or 'key'} differ)"
    for name in ("codes.npy", "mask.npy", "rows.npz"):
        if not (folder / name).is_file():
            return f"its {name} is missing"
    return None


# --- building ----------------------------------------------------------------------------------


def _clean_partials(cache_dir: Path, name: str) -> None:
    """Remove the partial folders of `name` whose build process is gone (a killed build)."""
    for partial in cache_dir.glob(f".{name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another run is building it now
        shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fill(records: SplitRecords, spec: CacheSpec, rows: Iterable[int], arrays: dict[str, Any]) -> int:
    """Decode the records at `rows` into the build's arrays. Returns how many."""
    n = 0
    for i in rows:
        example = decode_record(parse_example(records.record(i)), spec.image_size, records.presets,
                                codes_out=arrays["codes"][i])
        if "codes" not in example:
            raise CacheError("--cache holds render windows as uint8, but these shards hold DICOM (HU) "
                             "records; train without --cache")
        arrays["mask"][i] = example["mask"]
        arrays["table"][i] = example["table"]
        for key in TARGET_KEYS:
            arrays[key][i] = example[key]
        arrays["id"][i] = example["id"]
        n += 1
    return n


def _write_arrays(tmp: Path, records: SplitRecords, spec: CacheSpec, workers: int, progress: bool) -> None:
    """codes.npy and mask.npy (memmaps, filled by `workers` threads) and rows.npz in `tmp`, fsynced."""
    from tqdm import tqdm

    n, side = spec.count, spec.image_size
    arrays: dict[str, Any] = {
        "codes": np.lib.format.open_memmap(tmp / "codes.npy", "w+", np.uint8, (n, side, side, 4)),
        "mask": np.lib.format.open_memmap(tmp / "mask.npy", "w+", np.uint8, (n, side, side, 1)),
        "table": np.zeros((n, 4), np.uint8),
        "id": [b""] * n,
    }
    probe = targets(parse_example(records.record(0)), side) if n else {}
    for key in TARGET_KEYS:
        arrays[key] = np.zeros((n, *np.shape(probe.get(key, 0))), np.float32)
    chunks = [range(start, min(n, start + CHUNK)) for start in range(0, n, CHUNK)]
    with tqdm(total=n, unit="slice", desc=f"decoded cache {spec.name}", disable=not progress) as bar, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        for done in pool.map(lambda rows: _fill(records, spec, rows, arrays), chunks):
            bar.update(done)
    for key in ("codes", "mask"):
        arrays[key].flush()
    small = {key: arrays[key] for key in ("table", *TARGET_KEYS)}
    with open(tmp / "rows.npz", "wb") as handle:
        np.savez(handle, id=np.array(arrays["id"], dtype=object).astype(bytes), **small)
    for name in ("codes.npy", "mask.npy", "rows.npz"):
        _fsync(tmp / name)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build(cache_dir: Path, records: SplitRecords, spec: CacheSpec, workers: int = 1,
          progress: bool = False) -> DecodedSplit:
    """Decode every record of the split into DIR/<split>-<S>px, atomically (module docstring).

    Raises:
      CacheError: DICOM shards.
      CorruptRecordError, ReaderError: a record that does not read (as the reader raises them).
      OSError: the disk.
    """
    _clean_partials(cache_dir, spec.name)
    tmp = cache_dir / f".{spec.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=ordinary_mode(directory=True))
    try:
        _write_arrays(tmp, records, spec, workers, progress)
        # Written last: a folder without it (a killed build) is never taken for a cache.
        atomic_write_text(tmp / META_FILE, json.dumps(
            {"complete": True, "key": spec.key, "identity": spec.identity, "bytes": spec.nbytes}, indent=1))
        try:
            os.rename(tmp, cache_dir / spec.name)
        except OSError:
            if stale_reason(cache_dir / spec.name, spec) is not None:
                raise
            # Another run on the same shards finished the same cache first: use theirs.
            log.info("decoded cache %s was completed by another run meanwhile; using it", cache_dir / spec.name)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(cache_dir)
    return DecodedSplit(cache_dir / spec.name, spec)


# --- what fusion-train calls ---------------------------------------------------------------------


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _make_dir(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CacheError(f"--cache {cache_dir}: cannot write there ({err.strerror or err}); pick a "
                         "writable folder on a local disk, or drop --cache") from None


def check_space(cache_dir: Path, needed: int, freed: int = 0) -> None:
    """Refuse a build of `needed` bytes that DIR's disk cannot hold (after `freed` are removed).

    Raises:
      CacheError: not enough free space (the message gives both sizes and what to do).
    """
    free = shutil.disk_usage(cache_dir).free + freed
    if needed + HEADROOM > free:
        raise CacheError(
            f"--cache {cache_dir}: the decoded cache needs {_human(needed)} but its disk has "
            f"{_human(free)} free; free some space, pick a --cache folder on a larger local disk, "
            "a smaller --image-size, or train without --cache")


@dataclass(frozen=True)
class CachePlan:
    """One split's cache: its records, spec, folder and why it must be built (None: reuse)."""

    records: SplitRecords
    spec: CacheSpec
    folder: Path
    reason: str | None


def plan_caches(
    cache_dir: str | os.PathLike[str],
    shards_dir: str | os.PathLike[str],
    splits: Sequence[str],
    image_size: int,
    announce: bool = True,
) -> list[CachePlan]:
    """What `open_caches` will reuse and build, checked: DIR writable, render shards, and the
    disk able to hold all the builds together. Builds nothing.

    Args:
      announce: log each cache's size and whether it is reused or built.

    Raises:
      CacheError: DIR not writable, not enough space, DICOM shards.
      the errors of `SplitRecords`.
    """
    cache_dir, shards_dir = Path(cache_dir), Path(shards_dir)
    manifest = Manifest.load(shards_dir)
    if manifest.source != "render":
        raise CacheError(f"--cache holds render windows as uint8, but {shards_dir} holds "
                         f"{manifest.source} records; train without --cache")
    _make_dir(cache_dir)
    plans = []
    for split in splits:
        records = SplitRecords(shards_dir, split)
        spec = cache_spec(shards_dir, manifest, records, split, image_size)
        folder = cache_dir / spec.name
        reason = stale_reason(folder, spec) if folder.exists() else "there is none"
        plans.append(CachePlan(records, spec, folder, reason))
        if announce:
            verb = "reusing it" if reason is None else f"building it now ({reason})"
            log.info("decoded cache %s: %d slices at %d px, %s on disk; %s", folder, spec.count,
                     image_size, _human(spec.nbytes), verb)
    todo = [p for p in plans if p.reason is not None]
    check_space(cache_dir, sum(p.spec.nbytes for p in todo), sum(_folder_bytes(p.folder) for p in todo))
    return plans


def open_caches(
    cache_dir: str | os.PathLike[str],
    shards_dir: str | os.PathLike[str],
    splits: Sequence[str],
    image_size: int,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, DecodedSplit]:
    """The complete caches of `splits` at `image_size` in DIR, building the missing or stale ones
    (`plan_caches` first: sizes logged and space checked before any build).

    Returns:
      split -> `DecodedSplit`.

    Raises:
      CacheError: as `plan_caches`; a build that fails on the disk.
      CorruptRecordError, ReaderError: a record that does not read (as the reader raises them).
    """
    out: dict[str, DecodedSplit] = {}
    for plan in plan_caches(cache_dir, shards_dir, splits, image_size):
        if plan.reason is None:
            out[plan.spec.split] = DecodedSplit(plan.folder, plan.spec)
            continue
        _remove_stale(plan.folder)
        try:
            out[plan.spec.split] = build(Path(cache_dir), plan.records, plan.spec, workers, progress)
        except OSError as err:  # e.g. the disk filled up meanwhile; the partial folder is gone
            raise CacheError(f"--cache {cache_dir}: building {plan.folder.name} failed "
                             f"({err.strerror or err}); free some space or pick another --cache folder "
                             "on a local disk, or train without --cache") from None
        log.info("decoded cache %s built", plan.folder)
    return out


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _remove_stale(folder: Path) -> None:
    """Remove a stale cache folder: only one that holds a cache's files, never anything else."""
    if not folder.exists():
        return
    ours = {META_FILE, "codes.npy", "mask.npy", "rows.npz"}
    foreign = [p.name for p in folder.iterdir() if p.name not in ours] if folder.is_dir() else [folder.name]
    if foreign:
        raise CacheError(f"--cache: {folder} is in the way of the decoded cache and holds other files "
                         f"(e.g. {foreign[0]}); move it away or pick another --cache folder")
    shutil.rmtree(folder)
