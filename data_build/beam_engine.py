"""`fusion-build --engine beam`: the same shards and manifest, built by an Apache Beam pipeline.

Apache Beam is an optional extra (``pip install 'fusion[beam]'``); this module imports it only
inside functions, so ``import data_build.beam_engine`` works without it.

On the driver (this process), exactly as the local engine:

1. `drop.discover` finds the cases and the inputs it had to skip (needs ROOT as a local path
   or a mount; see below).
2. `records.plan_shards` assigns splits by patient and cuts shards; OUT is prepared with the
   local engine's own rules (refuse a foreign file, ``--overwrite`` removes only the build's
   files, the progress log's config line marks the folder as an unfinished build).
3. The plan goes to ``OUT/.beam/plan.jsonl`` (`build_plan`), the driver's facts (drop,
   discovery skips, config, planned shard names) to ``OUT/.beam/driver.json``.

In the pipeline (`_pipeline`):

4. ``ReadFromText(plan)`` -> `convert.make_example`, unchanged, in a DoFn; every skip bumps the
   Beam counter ``fusion-build/skipped:<reason>`` and goes to a tagged output, written as JSON
   lines to ``OUT/.beam/skipped-*.jsonl``.
5. Results are grouped by planned shard and written in plan order with `tfrecord.frame`, to
   ``.<shard>.tmp`` then renamed, through `FileSystems`: byte-identical to the local engine.
   A split without cases has no planned shard, so no 0-byte file.
6. A final step, run once after every shard's entry exists, lists the shards through
   `FileSystems`, checks each planned one is there with the size its writer reported, merges
   counts and skips with the local engine's own `records._manifest` and writes manifest.json
   last (atomically). A pipeline that fails or is killed before it leaves no manifest.

What still needs a local path: discovery (`drop.discover` walks ROOT with `os`/`pathlib`) and
conversion (`make_example` reads files by path with OpenCV/pydicom), so ROOT must be a folder
every worker sees at the same path (local disk for DirectRunner; a shared mount such as NFS or
gcsfuse on a cluster). OUT is written only through `FileSystems`, but the output-folder checks
and the CLI take a local path (or a mount) in this version.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from data_build import build_plan, convert, records, splits, tfrecord
from data_build.cases import Skip
from data_build.choices import DEFAULT_SHARD_SIZE

#: Folder in OUT for the plan, the driver's facts and the skips' JSON lines; removed on success.
STAGING = ".beam"
#: Beam metrics namespace of the skip counters (``skipped:<reason>``).
COUNTER_NAMESPACE = "fusion-build"
_SKIPS_TAG = "skips"
_INSTALL_HINT = ("--engine beam needs Apache Beam, an optional extra: pip install 'fusion[beam]' "
                 "(apache-beam 2.77.0, which needs protobuf < 7); or use --engine local")


class BeamUnavailable(records.BuildError):
    """``--engine beam`` without Apache Beam installed."""


class BeamOptionsError(records.BuildError):
    """``--beam-options`` that Beam cannot use (bad quoting, unknown option or runner)."""


@dataclass
class BeamBuildReport(records.BuildReport):
    """`records.BuildReport` plus the pipeline's skip counters (reason -> count)."""

    counters: dict[str, int] = field(default_factory=dict)


def require_beam() -> None:
    """Raise `BeamUnavailable` (one line, what to install) when ``apache_beam`` is missing."""
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise BeamUnavailable(_INSTALL_HINT) from None


def pipeline_options(text: str, workers: int) -> Any:
    """``--beam-options`` text -> `PipelineOptions`, DirectRunner defaults first.

    Defaults (a user's option of the same name wins): ``--runner=DirectRunner
    --direct_running_mode=multi_processing --direct_num_workers=<workers>
    --default_sdk_harness_log_level=WARNING``.

    Raises:
      BeamOptionsError: unbalanced quotes, an option no Beam component knows, an unknown runner.
    """
    require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners.runner import create_runner

    try:
        argv = shlex.split(text or "")
    except ValueError as err:
        raise BeamOptionsError(f"--beam-options {text!r} cannot be split into options: {err}") from None
    stray = [a for a in argv if not a.startswith("--")]
    if stray:
        raise BeamOptionsError(f"--beam-options takes --name=value options only; got {stray[0]!r} "
                               "(example: --beam-options \"--runner=FlinkRunner --parallelism=8\")")
    # WARNING: DirectRunner's worker processes otherwise log every bundle at INFO level.
    defaults = ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                f"--direct_num_workers={workers}", "--default_sdk_harness_log_level=WARNING"]
    options = PipelineOptions(defaults + argv)
    known = options.get_all_options(retain_unknown_options=False)
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
    if unknown:
        raise BeamOptionsError(f"--beam-options: Beam knows no option --{unknown[0]}; see "
                               "https://beam.apache.org/documentation/runners/ for each runner's options")
    runner = options.view_as(StandardOptions).runner
    try:
        create_runner(runner)
    except (ValueError, ImportError) as err:
        raise BeamOptionsError(f"--beam-options: cannot use runner {runner!r}: "
                               f"{str(err).splitlines()[0]}") from None
    return options


def describe(options: Any) -> str:
    """One line for the user: which runner, and for DirectRunner how many worker processes."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner == "DirectRunner":
        direct = options.view_as(DirectOptions)
        return f"DirectRunner, {direct.direct_num_workers} worker(s), {direct.direct_running_mode}"
    return str(runner)


# --- the pipeline's steps ----------------------------------------------------------------------


def _count_skip(reason: str) -> None:
    from apache_beam.metrics import Metrics

    Metrics.counter(COUNTER_NAMESPACE, f"skipped:{reason}").inc()


def _skip_line(shard: str, index: int, skip: Skip) -> str:
    return json.dumps({"shard": shard, "index": index, **records._skip_dict(skip)}, sort_keys=True)


def convert_line(line: str, options: convert.ConvertOptions) -> Iterator[Any]:
    """The DoFn body: one plan line -> ``(shard, (index, Converted | Skip))`` plus tagged skips."""
    from apache_beam import pvalue

    planned = build_plan.parse_line(line)
    result = convert.make_example(planned.case, options)
    skips = [result] if isinstance(result, Skip) else list(result.skips)
    for skip in skips:
        _count_skip(skip.reason)
        yield pvalue.TaggedOutput(_SKIPS_TAG, _skip_line(planned.shard, planned.index, skip))
    yield planned.shard, (planned.index, result)


def write_shard(shard: str, results: Any, out: str) -> Iterator[dict[str, Any]]:
    """Write one shard (records in plan order) through `FileSystems`; yield its entry.

    The entry has the local engine's progress-entry keys (`records._write_shard`): file, split,
    examples, sha256 (of the bytes written, hashed as they are written), bytes, counts, skips.
    """
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    ordered = sorted(results, key=lambda item: item[0])
    counts, skips, digest, size = records._empty_counts(), [], hashlib.sha256(), 0
    final = FileSystems.join(out, shard)
    tmp = FileSystems.join(out, f".{shard}{records.TMP_SUFFIX}")
    try:
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            for _, result in ordered:
                if isinstance(result, Skip):
                    skips.append(result)
                    continue
                skips.extend(result.skips)
                framed = tfrecord.frame(result.serialized)
                handle.write(framed)
                digest.update(framed)
                size += len(framed)
                records._count(counts, result)
        FileSystems.rename([tmp], [final])
    finally:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
    split = shard.split("-", 1)[0]
    yield {"kind": "shard", "file": shard, "split": split, "examples": counts["slices"],
           "sha256": digest.hexdigest(), "bytes": size, "counts": counts,
           "skips": [records._skip_dict(s) for s in skips]}


def _write_grouped(grouped: tuple[str, Any], out: str) -> Iterator[dict[str, Any]]:
    """`write_shard` for a ``(shard, results)`` pair from `GroupByKey`."""
    return write_shard(grouped[0], grouped[1], out)


def _read_json(path: str) -> Any:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def _listed_sizes(out: str) -> dict[str, int]:
    """Shard name -> size in bytes, as `FileSystems` lists OUT."""
    from apache_beam.io.filesystems import FileSystems

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
    driver = _read_json(driver_path)
    by_file = {e["file"]: dict(e) for e in entries}
    sizes = _listed_sizes(out)
    for name in driver["shards"]:
        if name not in by_file or name not in sizes:
            raise records.BuildError(f"shard {name} was not written; rerun with --overwrite")
        if sizes[name] != by_file[name]["bytes"]:
            raise records.BuildError(f"{name}: {sizes[name]} bytes listed, its writer wrote "
                                     f"{by_file[name]['bytes']}; rerun with --overwrite")
    drop = types.SimpleNamespace(**driver["drop"], skips=[records._skip_from_dict(s) for s in driver["skips"]])
    for skip in drop.skips:  # discovery skips: the counters then equal the manifest's counts
        _count_skip(skip.reason)
    manifest = records._manifest(drop, [by_file[name] for name in driver["shards"]], driver["config"])
    return _save_manifest(manifest, out)


def _save_manifest(manifest: Any, out: str) -> str:
    """`Manifest.save` for any `FileSystems` path: a temporary name, renamed over manifest.json."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    final = FileSystems.join(out, records.MANIFEST)
    tmp = FileSystems.join(out, f".{records.MANIFEST}.beam{records.TMP_SUFFIX}")  # records._OUR_TMP
    # The same text as `Manifest.save` (json, indent 1), so both engines' manifests read alike.
    text = json.dumps(manifest.to_dict(), indent=1, default=str) + "\n"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(text.encode("utf-8"))
    FileSystems.rename([tmp], [final])
    return final


def _pipeline(pipeline: Any, out: str, staging: str, options: convert.ConvertOptions) -> None:
    """Add the build's steps to `pipeline` (see the module docstring, steps 4-6)."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems

    lines = pipeline | "ReadPlan" >> beam.io.ReadFromText(FileSystems.join(staging, "plan.jsonl"))
    converted = lines | "Convert" >> beam.FlatMap(convert_line, options).with_outputs(_SKIPS_TAG, main="records")
    _ = converted[_SKIPS_TAG] | "WriteSkips" >> beam.io.WriteToText(
        FileSystems.join(staging, "skipped"), file_name_suffix=".jsonl")
    entries = (converted["records"]
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShard" >> beam.FlatMap(_write_grouped, out))
    _ = (pipeline
         | "Once" >> beam.Create([None])
         | "Manifest" >> beam.Map(finish, beam.pvalue.AsList(entries), out,
                                  FileSystems.join(staging, "driver.json")))


# --- the driver ----------------------------------------------------------------------------------


def _write_staging(staging: Path, plans: Sequence[Any], driver: Mapping[str, Any]) -> None:
    """The plan's JSON lines and the driver's facts, for the pipeline to read."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if staging.exists():
        shutil.rmtree(staging)  # a failed earlier run's leftovers; OUT was checked as ours
    staging.mkdir(parents=True)
    plain = CompressionTypes.UNCOMPRESSED
    with FileSystems.create(str(staging / "plan.jsonl"), compression_type=plain) as handle:
        for line in build_plan.plan_lines(plans):
            handle.write(line.encode("utf-8") + b"\n")
    with FileSystems.create(str(staging / "driver.json"), compression_type=plain) as handle:
        handle.write(json.dumps(driver, default=str).encode("utf-8"))


def _counters(result: Any) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    out: dict[str, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name.removeprefix("skipped:")
        out[name] = out.get(name, 0) + int(counter.committed or 0)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _run(beam_options: Any, out: Path, staging: Path, options: convert.ConvertOptions) -> dict[str, int]:
    """Run the pipeline to the end; a failure becomes one `BuildError` line."""
    import apache_beam as beam

    try:
        pipeline = beam.Pipeline(options=beam_options)
        _pipeline(pipeline, str(out), str(staging), options)
        result = pipeline.run()
        state = result.wait_until_finish()
    except Exception as err:  # Beam wraps a worker's exception in its own types
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else repr(err))
        raise records.BuildError(
            f"the Beam pipeline failed: {cause[:300]}. No manifest was written; fix the cause and "
            f"rerun with --overwrite (the skips found so far are in {staging}/skipped-*.jsonl)"
        ) from None
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise records.BuildError(f"the Beam pipeline ended in state {state}; no manifest was written")
    return _counters(result)


def build(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    source: str = "auto",
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    presets: Mapping[str, Any] | None = None,
    fractions: Sequence[float] = splits.DEFAULT_FRACTIONS,
    salt: str = splits.DEFAULT_SALT,
    split_method: str = splits.DEFAULT_METHOD,
    progress: bool = True,
    beam_options: str = "",
) -> BeamBuildReport:
    """`records.build` on Apache Beam: same arguments (no resume/strict), same shards.

    Args:
      beam_options: Beam pipeline options as one string, e.g. ``"--runner=FlinkRunner
        --flink_master=host:8081"``; DirectRunner in multi-processing mode with `workers`
        processes when empty.
      Others as `records.build`.

    Raises:
      BeamUnavailable, BeamOptionsError, cases.DropError, records.BuildError, splits.SplitError.
    """
    from data_build import drop as drop_module

    workers = max(1, int(workers or records._available_cores()))
    beam_opts = pipeline_options(beam_options, workers)  # bad options fail before the long scan
    root, out = Path(root), Path(out)
    records._check_options(shard_size, False, overwrite)
    if out.is_dir() and not overwrite and records._our_files(out):
        records._prepare_out(out, False, overwrite)  # raises OutputExistsError before the scan
    fractions = splits.check_fractions(fractions)
    drop = drop_module.discover(root, source=source, workers=workers, strict=False, progress=progress)
    return _build_drop(drop, out, workers, shard_size, overwrite, presets, fractions, salt,
                       split_method, beam_opts, beam_options)


def _build_drop(
    drop: Any, out: Path, workers: int, shard_size: int, overwrite: bool,
    presets: Mapping[str, Any] | None, fractions: Sequence[float], salt: str, split_method: str,
    beam_opts: Any, beam_text: str,
) -> BeamBuildReport:
    """Plan, prepare OUT, stage, run the pipeline; the driver half of `build`."""
    presets_json = records._presets_dict(presets)
    records._check_drop(drop, strict=False)
    plans = records.plan_shards(drop.cases, shard_size, fractions, salt, split_method)
    config = records._build_config(drop.source, shard_size, fractions, salt, split_method,
                                   presets_json, plans)
    records._refuse_foreign(out, [p.file for p in plans])
    previous = records._listed_shards(out)
    records._start_or_resume(out, config, False, overwrite)
    records._reusable_entries(out, plans, {}, previous)  # drops the stale shards of an older plan
    staging = out / STAGING
    driver = {
        "drop": {"root": str(Path(drop.root).resolve()), "source": drop.source,
                 "window_set": getattr(drop, "window_set", None), "stats": getattr(drop, "stats", {}),
                 "warnings": list(drop.warnings)},
        "skips": [records._skip_dict(s) for s in drop.skips],
        "config": {**config, "workers": workers, "strict": False, "engine": "beam",
                   "beam_options": beam_text},
        "shards": [p.file for p in plans],
    }
    _write_staging(staging, plans, driver)
    options = convert.ConvertOptions(source=drop.source,
                                     presets={k: tuple(v) for k, v in presets_json.items()})
    counters = _run(beam_opts, out, staging, options)
    shutil.rmtree(staging, ignore_errors=True)
    manifest = records.Manifest.load(out)
    return BeamBuildReport(
        out=out, manifest_path=out / records.MANIFEST,
        counts={name: c.to_dict() for name, c in manifest.counts.items()},
        skips=list(manifest.skipped), shards_written=len(plans), shards_reused=0,
        warnings=list(manifest.warnings), counters=counters,
    )
