"""`fusion-build --engine beam`: the same shards and manifest, built by an Apache Beam pipeline.

Apache Beam is an optional extra (``pip install 'fusion[beam]'``); this module imports it only
inside functions, so ``import data_build.beam_engine`` works without it.

On the driver (this process), exactly as the local engine:

1. `drop.discover` finds the cases and the inputs it had to skip (a local ROOT, or a URL; see
   below).
2. `records.plan_shards` assigns splits by patient and cuts shards; OUT is prepared with the
   local engine's own rules (refuse a foreign file, ``--overwrite`` removes only the build's
   files, the progress log's config line marks the folder as an unfinished build), through
   `pathlib` for a local OUT and `FileSystems` for a URL (`data_build.beam_out`).
3. The plan goes to ``OUT/.beam/plan.jsonl`` (`build_plan`), the driver's facts (drop,
   discovery skips, config, planned shard names) to ``OUT/.beam/driver.json``.

In the pipeline (`data_build.beam_steps`, which imports Beam):

4. ``ReadFromText(plan)`` -> `convert.make_example`, unchanged, in a DoFn; every skip bumps the
   Beam counter ``fusion-build/skipped:<reason>`` and goes to a tagged output, written as JSON
   lines to ``OUT/.beam/skipped-*.jsonl``. Record bytes go to the bundle's spill file in
   ``OUT/.beam/spill/``; only small metadata goes on through the shuffle.
5. Results are grouped by planned shard and written in plan order with `tfrecord.frame`, to
   ``.<shard>.<attempt>.tmp`` (a name of its own for each attempt: a runner may retry a bundle
   while the first attempt still writes) then renamed, through `FileSystems`: byte-identical to
   the local engine.
   A split without cases has no planned shard, so no 0-byte file.
6. A final step, run once after every shard's entry exists, lists the shards through
   `FileSystems`, checks each planned one is there with the size its writer reported, merges
   counts and skips with the local engine's own `records._manifest` and writes manifest.json
   last (atomically). A pipeline that fails or is killed before it leaves no manifest.
7. The driver removes the plan, its facts and the spill files; ``OUT/.beam/skipped-*.jsonl``
   stays (the conversion skips; the manifest lists them with discovery's).

ROOT and OUT may be URLs (``gs://``, ``s3://``, any `FileSystems` scheme): discovery lists and
reads a URL drop through `FileSystems` (`data_build.drop_io`), the workers open the cases' URL
inputs the same way (`locations.open_binary`), OUT's checks and writes go through `FileSystems`
(`data_build.beam_out`), and every registered `FileSystem` is named in ``--beam_plugins`` so
that the workers can open it too.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from data_build import build_plan, convert, locations, records, splits
from data_build.choices import DEFAULT_SHARD_SIZE

log = logging.getLogger(__name__)

#: Folder in OUT for the plan, the driver's facts, spill files and the skips' JSON lines; only
#: the skips' lines (``skipped-*.jsonl``) stay after a build.
STAGING = records.BEAM_STAGING
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


def check_location(location: str | os.PathLike[str], flag: str) -> None:
    """Raise `BeamOptionsError` (one line) when `location` is a URL no installed Beam filesystem
    can reach, e.g. ``gs://`` without ``apache-beam[gcp]``."""
    if not locations.is_url(location):
        return
    require_beam()
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.get_filesystem(str(location))
    except ValueError:
        scheme = str(location).split("://", 1)[0]
        raise BeamOptionsError(
            f"{flag} {location}: this Beam install has no filesystem for {scheme}://; install "
            "its extra (gs://: pip install 'apache-beam[gcp]', s3://: 'apache-beam[aws]', "
            "azfs://: 'apache-beam[azure]') or use a local folder"
        ) from None


def describe(options: Any) -> str:
    """One line for the user: which runner, and for DirectRunner how many worker processes."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner == "DirectRunner":
        direct = options.view_as(DirectOptions)
        return f"DirectRunner, {direct.direct_num_workers} worker(s), {direct.direct_running_mode}"
    return str(runner)


# --- the driver ----------------------------------------------------------------------------------


def _join(folder: Path | str, name: str) -> Path | str:
    """`folder` / `name` for a local folder (a `Path`) or a URL (a string, joined by FileSystems)."""
    if isinstance(folder, Path):
        return folder / name
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(folder, name)


def _prepare(out: Path | str, config: Mapping[str, Any], overwrite: bool, plans: Sequence[Any]) -> None:
    """OUT checked and prepared by the local engine's rules (`pathlib` for a local folder,
    `FileSystems` for a URL: `beam_out`)."""
    if isinstance(out, str):
        from data_build import beam_out

        beam_out.refuse_foreign(out, [p.file for p in plans])
        beam_out.start(out, config, overwrite)  # a new build: nothing of an older plan is kept
        return
    records._refuse_foreign(out, [p.file for p in plans])
    previous = records._listed_shards(out)
    records._start_or_resume(out, config, False, overwrite)
    records._reusable_entries(out, plans, {}, previous)  # drops the stale shards of an older plan


def _write_staging(staging: Path | str, plans: Sequence[Any], driver: Mapping[str, Any]) -> None:
    """The plan's JSON lines and the driver's facts, for the pipeline to read."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if isinstance(staging, str):
        from data_build import beam_out

        beam_out.delete_tree(staging)  # a failed earlier run's leftovers; OUT was checked as ours
    else:
        if staging.exists():
            shutil.rmtree(staging)  # as above
        (staging / "spill").mkdir(parents=True)
    plain = CompressionTypes.UNCOMPRESSED
    with FileSystems.create(str(_join(staging, "plan.jsonl")), compression_type=plain) as handle:
        for line in build_plan.plan_lines(plans):
            handle.write(line.encode("utf-8") + b"\n")
    with FileSystems.create(str(_join(staging, "driver.json")), compression_type=plain) as handle:
        handle.write(json.dumps(driver, default=str).encode("utf-8"))


def _clean_staging(staging: Path | str) -> None:
    """After a build: drop the plan, the driver's facts and the spill files (the bulk); keep the
    skips' JSON lines (``skipped-*.jsonl``, small: one line per conversion skip)."""
    if isinstance(staging, str):
        from apache_beam.io.filesystems import FileSystems

        from data_build import beam_out

        beam_out.delete_tree(FileSystems.join(staging, "spill"))
        done = [FileSystems.join(staging, n) for n in ("plan.jsonl", "driver.json")]
        FileSystems.delete([p for p in done if FileSystems.exists(p)])
        return
    shutil.rmtree(staging / "spill", ignore_errors=True)
    for name in ("plan.jsonl", "driver.json"):
        (staging / name).unlink(missing_ok=True)


def _counters(result: Any) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    from data_build.beam_steps import COUNTER_NAMESPACE

    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    out: dict[str, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name.removeprefix("skipped:")
        out[name] = out.get(name, 0) + int(counter.committed or 0)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _ship_filesystems(options: Any) -> None:
    """Name every `FileSystem` imported here (Beam's, a user's plugin for another scheme) in
    ``--beam_plugins``, so that the workers import it too: Beam does this for Dataflow only, and
    a worker process without the class cannot open that scheme's URLs."""
    from apache_beam.io.filesystem import FileSystem
    from apache_beam.options.pipeline_options import SetupOptions

    setup = options.view_as(SetupOptions)
    found = [f"{cls.__module__}.{cls.__name__}" for cls in FileSystem.get_all_subclasses()]
    setup.beam_plugins = sorted(set(setup.beam_plugins or []) | set(found))


def _run(beam_options: Any, out: Path | str, staging: Path | str,
         options: convert.ConvertOptions) -> dict[str, int]:
    """Run the pipeline to the end; a failure becomes one `BuildError` line."""
    import apache_beam as beam

    from data_build import beam_steps

    _ship_filesystems(beam_options)
    try:
        pipeline = beam.Pipeline(options=beam_options)
        beam_steps.add_steps(pipeline, str(out), str(staging), options)
        result = pipeline.run()
        state = result.wait_until_finish()
    except Exception as err:  # Beam wraps a worker's exception in its own types
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else repr(err))
        raise records.BuildError(
            f"the Beam pipeline failed: {cause[:300]}. No manifest was written; fix the cause and "
            f"rerun with --overwrite (the pipeline's scratch files are in {staging})"
        ) from None
    if str(state) not in ("DONE", "PipelineState.DONE"):
        raise records.BuildError(f"the Beam pipeline ended in state {state}; no manifest was written")
    return _counters(result)


def _absolute(location: str | Path) -> str | Path:
    """A local path made absolute (workers may not share the driver's working folder); URLs as given."""
    return location.resolve() if isinstance(location, Path) else location


def _warn_local_paths_off_direct(options: Any, root: str | Path, out: str | Path) -> None:
    """Warn when a cluster runner gets local paths: its workers read and write their own disks."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = str(options.view_as(StandardOptions).runner)
    local = [f"{what} {p}" for what, p in (("ROOT", root), ("--out", out)) if isinstance(p, Path)]
    if local and runner != "DirectRunner":
        log.warning("%s with %s: every worker must see these at the same absolute path (a shared "
                    "mount); otherwise give URLs (gs://, s3://, hdfs://)", " and ".join(local), runner)


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
    root, out = _absolute(locations.path_or_url(root)), _absolute(locations.path_or_url(out))
    check_location(root, "ROOT")
    check_location(out, "--out")
    _warn_local_paths_off_direct(beam_opts, root, out)
    records._check_options(shard_size, False, overwrite)
    if isinstance(out, str):  # a URL: the same rules through FileSystems
        from data_build import beam_out

        beam_out.refuse_existing(out, overwrite)  # OutputExistsError before the scan
    elif out.is_dir() and not overwrite and records._our_files(out):
        records._prepare_out(out, False, overwrite)  # raises OutputExistsError before the scan
    fractions = splits.check_fractions(fractions)
    drop = drop_module.discover(root, source=source, workers=workers, strict=False, progress=progress)
    return _build_drop(drop, out, workers, shard_size, overwrite, presets, fractions, salt,
                       split_method, beam_opts, beam_options)


def _root_text(root: Any) -> str:
    """The manifest's ``root``: a local folder resolved (as the local engine writes it), a URL as is."""
    if isinstance(root, os.PathLike) or (isinstance(root, str) and not locations.is_url(root)):
        return str(Path(root).resolve())
    return str(root)  # a URL drop's `drop_io.UrlPath`


def _build_drop(
    drop: Any, out: Path | str, workers: int, shard_size: int, overwrite: bool,
    presets: Mapping[str, Any] | None, fractions: Sequence[float], salt: str, split_method: str,
    beam_opts: Any, beam_text: str,
) -> BeamBuildReport:
    """Plan, prepare OUT, stage, run the pipeline; the driver half of `build`."""
    presets_json = records._presets_dict(presets)
    records._check_drop(drop, strict=False)
    plans = records.plan_shards(drop.cases, shard_size, fractions, salt, split_method)
    config = records._build_config(drop.source, shard_size, fractions, salt, split_method,
                                   presets_json, plans)
    _prepare(out, config, overwrite, plans)
    staging = _join(out, STAGING)
    driver = {
        "drop": {"root": _root_text(drop.root), "source": drop.source,
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
    _clean_staging(staging)
    if isinstance(out, str):
        from data_build import beam_out

        manifest = beam_out.load_manifest(out)
    else:
        manifest = records.Manifest.load(out)
    return BeamBuildReport(
        out=out, manifest_path=_join(out, records.MANIFEST),
        counts={name: c.to_dict() for name, c in manifest.counts.items()},
        skips=list(manifest.skipped), shards_written=len(plans), shards_reused=0,
        warnings=list(manifest.warnings), counters=counters,
    )
