"""`fusion-build --engine beam --out URL`: the output-folder rules of `records`, through `FileSystems`.

OUT is a URL (``gs://bucket/shards``, ``s3://...``, any scheme Beam's `FileSystems` knows): every
check and write goes through `FileSystems` (match, exists, create, rename, delete), with the local
engine's rules (`records._our_files`, `_refuse_foreign`, `_prepare_out`, `_start_or_resume`):

- files a build wrote (manifest, progress log, the shards they list, the build's temporaries)
  are "ours"; anything else is never deleted or replaced (a user's own file is refused);
- a folder holding ours is refused unless ``--overwrite``, which deletes only ours;
- the manifest goes first (a folder without one reads as unfinished), the progress log's config
  line marks the folder as a build's.

A local ``--out`` keeps the local engine's own `pathlib` code (`data_build.beam_engine`).
Imports Apache Beam: used only by a Beam build.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Iterable, Mapping

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from data_build import records
from data_build.manifest import Manifest

_PLAIN = CompressionTypes.UNCOMPRESSED


def listing(folder: str) -> dict[str, int]:
    """Files directly in `folder` (not in sub-folders such as ``.beam/``): name -> bytes."""
    prefix = folder.rstrip("/") + "/"
    found = FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list
    names = {m.path[len(prefix):]: int(m.size_in_bytes) for m in found if m.path.startswith(prefix)}
    return {name: size for name, size in names.items() if name and "/" not in name}


def read_text(path: str) -> str | None:
    """The file's text, None when it is absent or unreadable (as `records` treats a missing file)."""
    try:
        with FileSystems.open(path, compression_type=_PLAIN) as handle:
            return handle.read().decode("utf-8")
    except Exception:  # BeamIOError, IOError, UnicodeDecodeError: not a build's file
        return None


def attempt_tmp(folder: str, name: str) -> str:
    """A temporary name for `name` in `folder`, new for every call (``records._OUR_TMP``'s form).

    A runner may run one bundle twice at once (a retry beside a worker it gave up on): with one
    fixed name both would write the same temporary, and a rename could publish their interleaved
    bytes as a whole shard. Each attempt writes its own file; the renames publish equal bytes."""
    return FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}{records.TMP_SUFFIX}")


def write_text(path: str, text: str) -> None:
    """Write `text` to a temporary name beside `path`, then rename it over `path`."""
    folder, name = FileSystems.split(path)
    tmp = attempt_tmp(folder, name)
    with FileSystems.create(tmp, compression_type=_PLAIN) as handle:
        handle.write(text.encode("utf-8"))
    FileSystems.rename([tmp], [path])


def _manifest_shards(out: str) -> set[str] | None:
    """Shard names OUT/manifest.json lists when a build wrote it, else None (`records` rule)."""
    path = FileSystems.join(out, records.MANIFEST)
    text = read_text(path)
    try:
        return None if text is None else {s.file for s in Manifest.from_dict(json.loads(text), path).shards}
    except ValueError:  # not JSON, or not a manifest (ManifestError is a ValueError)
        return None


def _progress(out: str) -> tuple[bool, set[str]]:
    """(the progress log has a config line, shard names it lists); torn lines are ignored."""
    text = read_text(FileSystems.join(out, records.PROGRESS)) or ""
    config, shards = False, set()
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("kind") == "config":
            config = True
        elif isinstance(entry, dict) and entry.get("kind") == "shard":
            shards.add(str(entry.get("file")))
    return config, shards


def our_files(out: str) -> list[str]:
    """Names of the files a previous build wrote in OUT (`records._our_files` through FileSystems)."""
    present, manifest_shards = listing(out), _manifest_shards(out)
    listed = _progress(out)[1] | (manifest_shards or set())
    names = {n for n in listed if n.endswith(records.SHARD_SUFFIX) and "/" not in n} | {records.PROGRESS}
    if manifest_shards is not None:
        names.add(records.MANIFEST)
    return sorted(n for n in present if n in names or records._OUR_TMP.fullmatch(n))


def refuse_existing(out: str, overwrite: bool) -> None:
    """Raise `records.OutputExistsError` when OUT holds a build and `overwrite` is off."""
    ours = our_files(out)
    if ours and not overwrite:
        state = "a finished build" if records.MANIFEST in listing(out) else "an unfinished build"
        raise records.OutputExistsError(
            f"{out} already holds {state} ({len(ours)} files). Use --overwrite to replace it, "
            "or choose another --out."
        )


def refuse_foreign(out: str, planned: Iterable[str]) -> None:
    """Raise when a file this build would replace was not written by a build (`records` rule)."""
    present = listing(out)
    manifest_ours = _manifest_shards(out) is not None
    ours = manifest_ours or _progress(out)[0]
    foreign = [] if ours else [n for n in planned if n in present]
    if records.MANIFEST in present and not manifest_ours:
        foreign.insert(0, records.MANIFEST)
    if foreign:
        raise records.BuildError(
            f"{out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which "
            "fusion-build did not write and would replace; move it away or choose another --out"
        )


def start(out: str, config: Mapping[str, Any], overwrite: bool) -> None:
    """Prepare OUT for a new build: delete a previous build's files (only with `overwrite`),
    manifest first, then write the progress log's config line."""
    refuse_existing(out, overwrite)
    ours = our_files(out)
    if records.MANIFEST in ours:  # first: from here on, OUT reads as an unfinished build
        FileSystems.delete([FileSystems.join(out, records.MANIFEST)])
    rest = [FileSystems.join(out, n) for n in ours if n != records.MANIFEST]
    if rest:
        FileSystems.delete(rest)
    line = json.dumps({"kind": "config", "config": dict(config)}, sort_keys=True)
    write_text(FileSystems.join(out, records.PROGRESS), line + "\n")


def delete_tree(folder: str) -> None:
    """Delete every file under `folder` (sub-folders too), then the folder where there are folders."""
    found = FileSystems.match([FileSystems.join(folder, "**")])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])
    if FileSystems.exists(folder):  # a filesystem with folders (local, HDFS) keeps the empty one
        FileSystems.delete([folder])


def load_manifest(out: str) -> Manifest:
    """OUT/manifest.json read through `FileSystems`.

    Raises:
      records.BuildError: no manifest or not one (the pipeline ended without writing it).
    """
    path = FileSystems.join(out, records.MANIFEST)
    text = read_text(path)
    if text is None:
        raise records.BuildError(f"{path} was not written; rerun with --overwrite")
    return Manifest.from_dict(json.loads(text), path)
