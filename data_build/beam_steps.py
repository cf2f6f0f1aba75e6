"""The steps of `fusion-build --engine beam`'s pipeline (imports Apache Beam: the ``beam`` extra).

`data_build.beam_engine` is the driver and imports this module only when a Beam build runs.

Memory: the converted records never go through the shuffle. Each `ConvertFn` bundle appends
its records to one spill file of its own, ``OUT/.beam/spill/<uuid>.bin``, and sends on only
``(shard, (position, Converted without bytes | Skip, (spill file, offset, length)))``; the
shard writer reads the bytes back in plan order. The shuffle then holds a few hundred bytes a
slice instead of ~150 kB (a first version that grouped the records themselves peaked at
9 GiB for 10,000 slices on DirectRunner, which keeps its shuffle in memory).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from data_build import beam_out, build_plan, convert, records, tfrecord
from data_build.cases import Skip

#: Beam metrics namespace of the skip counters (``skipped:<reason>``).
COUNTER_NAMESPACE = "fusion-build"
SKIPS_TAG = "skips"
_PLAIN = CompressionTypes.UNCOMPRESSED


def count_skip(reason: str) -> None:
    """Bump the Beam counter ``fusion-build/skipped:<reason>``."""
    Metrics.counter(COUNTER_NAMESPACE, f"skipped:{reason}").inc()


def _skip_line(shard: str, index: int, skip: Skip) -> str:
    return json.dumps({"shard": shard, "index": index, **records._skip_dict(skip)}, sort_keys=True)


class ConvertFn(beam.DoFn):
    """One plan line -> `convert.make_example` (unchanged) -> a spilled record and its metadata.

    Main output: ``(shard, (position, result, where))``; ``result`` is the `Converted` with
    empty ``serialized`` (its bytes are at ``where`` = (spill path, offset, length)) or the
    `Skip` (``where`` None). Tagged output ``skips``: one JSON line per skip.
    """

    def __init__(self, options: convert.ConvertOptions, spill_dir: str) -> None:
        self._options = options
        self._spill_dir = spill_dir
        self._handle: Any = None
        self._path = ""
        self._offset = 0

    def start_bundle(self) -> None:
        self._close_spill()  # a failed bundle's file is never finished (a retry writes anew)
        self._offset = 0

    def teardown(self) -> None:
        self._close_spill()

    def _close_spill(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()

    def _spill(self, data: bytes) -> tuple[str, int, int]:
        if self._handle is None:  # one file per bundle, unique: a retried bundle writes anew
            self._path = FileSystems.join(self._spill_dir, f"{uuid.uuid4().hex}.bin")
            self._handle = FileSystems.create(self._path, compression_type=_PLAIN)
        self._handle.write(data)
        where = (self._path, self._offset, len(data))
        self._offset += len(data)
        return where

    def process(self, line: str) -> Iterator[Any]:
        planned = build_plan.parse_line(line)
        result = convert.make_example(planned.case, self._options)
        skips = [result] if isinstance(result, Skip) else list(result.skips)
        for skip in skips:
            count_skip(skip.reason)
            yield pvalue.TaggedOutput(SKIPS_TAG, _skip_line(planned.shard, planned.index, skip))
        if isinstance(result, Skip):
            yield planned.shard, (planned.index, result, None)
        else:
            where = self._spill(result.serialized)
            yield planned.shard, (planned.index, dataclasses.replace(result, serialized=b""), where)

    def finish_bundle(self) -> None:
        self._close_spill()  # closed before the bundle commits: readers see it whole


class _SpillReader:
    """Reads spilled records back, one open file per spill file."""

    def __init__(self) -> None:
        self._open: dict[str, Any] = {}

    def read(self, where: tuple[str, int, int]) -> bytes:
        path, offset, length = where
        if path not in self._open:
            self._open[path] = FileSystems.open(path, compression_type=_PLAIN)
        handle = self._open[path]
        handle.seek(offset)
        data = handle.read(length)
        if len(data) != length:
            raise records.BuildError(f"spill file {path} is short at {offset}; rerun with --overwrite")
        return data

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()


def write_shard(grouped: tuple[str, Any], out: str) -> Iterator[dict[str, Any]]:
    """Write one shard (records in plan order) through `FileSystems`; yield its entry.

    The entry has the local engine's progress-entry keys (`records._write_shard`): file, split,
    examples, sha256 (of the bytes written, hashed as they are written), bytes, counts, skips.
    """
    shard, results = grouped
    counts, skips, digest, size = records._empty_counts(), [], hashlib.sha256(), 0
    final = FileSystems.join(out, shard)
    tmp = beam_out.attempt_tmp(out, shard)
    reader = _SpillReader()
    try:
        with FileSystems.create(tmp, compression_type=_PLAIN) as handle:
            for _, result, where in sorted(results, key=lambda item: item[0]):
                if isinstance(result, Skip):
                    skips.append(result)
                    continue
                skips.extend(result.skips)
                framed = tfrecord.frame(reader.read(where))
                handle.write(framed)
                digest.update(framed)
                size += len(framed)
                records._count(counts, result)
        FileSystems.rename([tmp], [final])
    finally:
        reader.close()
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
    yield {"kind": "shard", "file": shard, "split": shard.split("-", 1)[0],
           "examples": counts["slices"], "sha256": digest.hexdigest(), "bytes": size,
           "counts": counts, "skips": [records._skip_dict(s) for s in skips]}


def _read_json(path: str) -> Any:
    with FileSystems.open(path, compression_type=_PLAIN) as handle:
        return json.loads(handle.read().decode("utf-8"))


def _listed_sizes(out: str) -> dict[str, int]:
    """Shard name -> size in bytes, as `FileSystems` lists OUT."""
    pattern = FileSystems.join(out, f"*{records.SHARD_SUFFIX}")
    found = FileSystems.match([pattern])[0].metadata_list
    return {m.path.rstrip("/").rsplit("/", 1)[-1]: int(m.size_in_bytes) for m in found}


def finish(_: Any, entries: Sequence[Mapping[str, Any]], out: str, driver_path: str) -> str:
    """The final step: check the listed shards, build the manifest, write it last.

    Returns:
      the manifest's path.

    Raises:
      records.BuildError: a planned shard has no entry, is not listed, or has another size.
    """
    import types

    driver = _read_json(driver_path)
    by_file = {e["file"]: dict(e) for e in entries}
    sizes = _listed_sizes(out)
    for name in driver["shards"]:
        if name not in by_file or name not in sizes:
            raise records.BuildError(f"shard {name} was not written; rerun with --overwrite")
        if sizes[name] != by_file[name]["bytes"]:
            raise records.BuildError(f"{name}: {sizes[name]} bytes listed, its writer wrote "
                                     f"{by_file[name]['bytes']}; rerun with --overwrite")
    skips = [records._skip_from_dict(s) for s in driver["skips"]]
    drop = types.SimpleNamespace(**driver["drop"], skips=skips)
    for skip in drop.skips:  # discovery skips: the counters then equal the manifest's counts
        count_skip(skip.reason)
    manifest = records._manifest(drop, [by_file[name] for name in driver["shards"]], driver["config"])
    return _save_manifest(manifest, out)


def _save_manifest(manifest: Any, out: str) -> str:
    """`Manifest.save` for any `FileSystems` path: a temporary name, renamed over manifest.json."""
    final = FileSystems.join(out, records.MANIFEST)
    # The same text as `Manifest.save` (json, indent 1), so both engines' manifests read alike.
    beam_out.write_text(final, json.dumps(manifest.to_dict(), indent=1, default=str) + "\n")
    return final


def add_steps(pipeline: Any, out: str, staging: str, options: convert.ConvertOptions) -> None:
    """Add the build's steps to `pipeline` (see `data_build.beam_engine`, steps 4-6)."""
    lines = pipeline | "ReadPlan" >> beam.io.ReadFromText(FileSystems.join(staging, "plan.jsonl"))
    converted = lines | "Convert" >> beam.ParDo(
        ConvertFn(options, FileSystems.join(staging, "spill"))).with_outputs(SKIPS_TAG, main="records")
    _ = converted[SKIPS_TAG] | "WriteSkips" >> beam.io.WriteToText(
        FileSystems.join(staging, "skipped"), file_name_suffix=".jsonl")
    entries = (converted["records"]
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShard" >> beam.FlatMap(write_shard, out))
    _ = (pipeline
         | "Once" >> beam.Create([None])
         | "Manifest" >> beam.Map(finish, beam.pvalue.AsList(entries), out,
                                  FileSystems.join(staging, "driver.json")))
