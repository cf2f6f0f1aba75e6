"""fusion-build --engine beam: the same shards, manifest and skip counts as --engine local.

Needs Apache Beam (``pip install 'fusion[beam]'``, or ``make test-beam``, which makes its own
virtualenv); skipped where it is absent, as in the main test environment.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("apache_beam")

from data_build import beam_engine, cli, records  # noqa: E402
from data_build.manifest import Manifest  # noqa: E402
from data_build.synth import writer as synth  # noqa: E402

#: Beam in this process (no worker processes): fast, and lets a test break the final step.
IN_PROCESS = "--direct_running_mode=in_memory"


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic drop with the writer's planted broken inputs (corrupt JPEG, missing window,
    malformed polygons, corrupt DICOM) and a flagged slice."""
    root = tmp_path_factory.mktemp("beam") / "drop"
    summary = synth.write_synthetic_drop(root, n_patients=6, slices_per_patient=3, size=48, seed=3,
                                         dicoms=False)
    assert summary.broken  # the comparison must cover skips
    return root


@pytest.fixture(scope="module")
def both(drop: Path) -> tuple[Path, Path, beam_engine.BeamBuildReport]:
    """The same drop built by each engine (shard_size 4: several shards a split). Beam runs in
    multi-processing mode with 2 workers, as `fusion-build --engine beam --workers 2` does."""
    local, beam = drop.parent / "local", drop.parent / "beam"
    records.build(drop, local, workers=2, shard_size=4, progress=False)
    report = beam_engine.build(drop, beam, workers=2, shard_size=4, progress=False)
    return local, beam, report


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}


def test_shards_are_byte_identical_to_the_local_engine(both: tuple) -> None:
    local, beam, _ = both
    assert len(_shards(local)) > 2 and _shards(beam) == _shards(local)
    ours, theirs = Manifest.load(beam), Manifest.load(local)
    assert ours.shards == theirs.shards  # names, splits, examples, sha256, bytes, in plan order
    assert ours.counts == theirs.counts and ours.image_size == theirs.image_size
    assert ours.skipped == theirs.skipped and ours.warnings == theirs.warnings
    assert ours.config == {**theirs.config, "engine": "beam", "beam_options": ""}
    staged = sorted(p.name for p in (beam / beam_engine.STAGING).iterdir())
    assert len(staged) == 1 and staged[0].startswith("skipped-")  # plan and spill files are gone


def test_skips_are_written_as_json_lines(both: tuple, drop: Path) -> None:
    from data_build.drop import discover

    _, beam, _ = both
    lines = [json.loads(line) for path in (beam / beam_engine.STAGING).glob("skipped-*.jsonl")
             for line in path.read_text().splitlines()]
    at_discovery = {(s.id, s.reason) for s in discover(drop, source="render").skips}
    converting = {(s.id, s.reason) for s in Manifest.load(beam).skipped} - at_discovery
    assert converting and {(d["id"], d["reason"]) for d in lines} == converting
    assert all(d["shard"].endswith(".tfrecord") and isinstance(d["index"], int) for d in lines)


def test_skip_counters_equal_the_local_engines_skip_counts(both: tuple) -> None:
    local, _, report = both
    expected = Manifest.load(local).skipped_by_reason
    assert {"corrupt-image", "missing-window", "malformed-polygon", "flagged"} <= set(expected)
    assert report.counters == expected
    assert report.skips_by_reason == expected


def test_a_failed_final_step_leaves_no_manifest(drop: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed before the manifest")

    monkeypatch.setattr(records, "_manifest", killed)
    out = tmp_path / "out"
    with pytest.raises(records.BuildError, match="killed before the manifest.*No manifest"):
        beam_engine.build(drop, out, workers=1, progress=False, beam_options=IN_PROCESS)
    assert not (out / "manifest.json").exists() and list(out.glob("*.tfrecord"))
    monkeypatch.undo()
    again = CliRunner().invoke(cli.build, [str(drop), "--out", str(out), "--engine", "beam",
                                           "--no-progress", "--beam-options", IN_PROCESS])
    assert again.exit_code == 1 and "an unfinished build" in again.output  # not taken as complete
    done = CliRunner().invoke(cli.build, [str(drop), "--out", str(out), "--engine", "beam", "--overwrite",
                                          "--workers", "1", "--beam-options", IN_PROCESS])
    assert done.exit_code == 0 and "Apache Beam (DirectRunner, 1 worker(s), in_memory)" in done.output
    assert "Wrote " in done.output and (out / "manifest.json").is_file()
    monkeypatch.setattr(records, "_manifest", killed)  # a failed rebuild over a finished one
    with pytest.raises(records.BuildError, match="No manifest"):
        beam_engine.build(drop, out, workers=1, progress=False, overwrite=True, beam_options=IN_PROCESS)
    assert not (out / "manifest.json").exists()  # the old one went before any shard changed


def test_an_empty_split_writes_no_shard(drop: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = beam_engine.build(drop, out, workers=1, progress=False, fractions=(1.0, 0.0, 0.0),
                               beam_options=IN_PROCESS)
    names = sorted(p.name for p in out.glob("*.tfrecord"))
    assert names == ["train-00000-of-00001.tfrecord"] and (out / names[0]).stat().st_size > 0
    assert report.counts["val"]["slices"] == report.counts["test"]["slices"] == 0


@pytest.mark.parametrize(("options", "says"), [
    ("--runner=NoSuchRunner", "cannot use runner 'NoSuchRunner'"),
    ("--no_such_option=3", "Beam knows no option --no_such_option"),
    ("--runner='DirectRunner", "cannot be split into options"),
    ("DirectRunner", "--name=value options only"),
])
def test_bad_beam_options_are_one_line_usage_errors(drop: Path, tmp_path: Path, options: str,
                                                    says: str) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.build, [str(drop), "--out", str(out), "--engine", "beam",
                                            "--beam-options", options])
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--resume", "--strict"])
def test_local_only_flags_are_refused_with_beam(drop: Path, tmp_path: Path, flag: str) -> None:
    result = CliRunner().invoke(cli.build, [str(drop), "--out", str(tmp_path / "o"), "--engine", "beam",
                                            flag])
    assert result.exit_code == 2 and f"{flag} works with --engine local only" in result.output


def _convert_first_shard(drop: Path, spill: Path) -> tuple[Any, list]:
    """The drop's first planned shard through one `ConvertFn` bundle: the plan, and what the
    bundle sends on to the shuffle, ``(position, result, where)`` per slice."""
    from data_build import beam_steps, build_plan, convert
    from data_build.drop import discover

    plans = records.plan_shards(discover(drop, source="render").cases, 4, (0.8, 0.1, 0.1), "salt")
    fn = beam_steps.ConvertFn(convert.ConvertOptions(), str(spill))
    fn.start_bundle()
    outputs = [o for line in build_plan.plan_lines(plans[:1]) for o in fn.process(line)]
    fn.finish_bundle()
    return plans[0], [o[1] for o in outputs if isinstance(o, tuple)]  # (shard, (position, result, where))


def test_record_bytes_bypass_the_shuffle(drop: Path, tmp_path: Path) -> None:
    """The shuffle carries metadata only; the bytes are read back from the bundle's spill file
    (DirectRunner keeps its shuffle in memory: 9 GiB for 10,000 slices when it held records)."""
    from data_build import beam_steps, convert

    plan, sent = _convert_first_shard(drop, tmp_path / "spill")
    converted = [(r, where) for _, r, where in sent if where is not None]
    assert converted and all(r.serialized == b"" for r, _ in converted)
    cases = {c.id: c for c in plan.cases}
    reader = beam_steps._SpillReader()
    for result, where in converted:
        assert reader.read(where) == convert.make_example(cases[result.id]).serialized
    reader.close()


def test_two_attempts_at_one_shard_at_once_publish_a_whole_shard(
        drop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner may run a bundle again while the first attempt still writes (a worker it gave up
    on): each attempt writes its own temporary, so the shard renamed into place is whole."""
    import hashlib

    from data_build import beam_steps, tfrecord

    plan, sent = _convert_first_shard(drop, tmp_path / "spill")
    grouped, out = (plan.file, sent), tmp_path / "out"
    out.mkdir()
    frame, inner, started = tfrecord.frame, [], []

    def frame_and_start_a_second_attempt(data: bytes) -> bytes:
        if not started:  # the first attempt is writing its first record: a second one runs whole
            started.append(True)
            inner.extend(beam_steps.write_shard(grouped, str(out)))
        return frame(data)

    monkeypatch.setattr(tfrecord, "frame", frame_and_start_a_second_attempt)
    outer = list(beam_steps.write_shard(grouped, str(out)))
    assert inner and outer[0]["sha256"] == inner[0]["sha256"]
    assert hashlib.sha256((out / plan.file).read_bytes()).hexdigest() == outer[0]["sha256"]
    assert sorted(p.name for p in out.iterdir()) == [plan.file]  # no temporary left


def test_a_failed_bundle_leaves_no_spill_file_open(tmp_path: Path) -> None:
    # A bundle that fails before finish_bundle: the next bundle (or teardown) closes its file.
    from data_build import beam_steps, convert

    (tmp_path / "spill").mkdir()
    fn = beam_steps.ConvertFn(convert.ConvertOptions(), str(tmp_path / "spill"))
    fn.start_bundle()
    fn._spill(b"record")
    handle = fn._handle
    fn.start_bundle()  # no finish_bundle: the first bundle failed
    assert handle.closed and fn._handle is None
    fn._spill(b"again")
    handle = fn._handle
    fn.teardown()
    assert handle.closed


# --- --out as a URL: everything through FileSystems (tests/fakefs.py: fakefs:// over a folder) ---

from tests import fakefs  # noqa: E402  (registers the fakefs:// filesystem; needs Beam)


def _cli_build(*args: str) -> object:
    return CliRunner().invoke(cli.build, [*args, "--no-progress"])


def test_out_as_a_url_gives_the_local_engines_shards_and_a_manifest(both: tuple, drop: Path,
                                                                     tmp_path: Path) -> None:
    """Multi-processing workers (separate processes) must open fakefs:// too: the driver names
    every registered FileSystem in --beam_plugins (`beam_engine._ship_filesystems`)."""
    local, _, _ = both
    mapped = tmp_path / "bucket" / "shards"
    result = _cli_build(str(drop), "--out", fakefs.url(mapped), "--engine", "beam", "--workers", "2",
                        "--shard-size", "4")
    assert result.exit_code == 0, result.output
    assert f"Manifest: {fakefs.url(mapped)}/manifest.json" in result.output  # not folded to fakefs:/
    assert _shards(mapped) == _shards(local)
    ours, theirs = Manifest.load(mapped), Manifest.load(local)
    assert ours.shards == theirs.shards and ours.counts == theirs.counts
    assert ours.skipped == theirs.skipped
    staged = sorted(p.name for p in (mapped / beam_engine.STAGING).iterdir())
    assert len(staged) == 1 and staged[0].startswith("skipped-")  # plan and spill files are gone
    verified = CliRunner().invoke(cli.verify, [str(mapped)])
    assert verified.exit_code == 0, verified.output


def test_a_url_out_keeps_the_output_folder_rules(drop: Path, tmp_path: Path) -> None:
    mapped = tmp_path / "shards"
    url = fakefs.url(mapped)
    beam = ("--engine", "beam", "--beam-options", IN_PROCESS)
    assert _cli_build(str(drop), "--out", url, *beam).exit_code == 0
    (mapped / "notes.txt").write_text("a user's own file")
    again = _cli_build(str(drop), "--out", url, *beam)
    assert again.exit_code == 1 and "already holds a finished build" in again.output
    old_shards = {s.file for s in Manifest.load(mapped).shards}
    done = _cli_build(str(drop), "--out", url, "--overwrite", "--shard-size", "4", *beam)
    assert done.exit_code == 0, done.output
    assert (mapped / "notes.txt").read_text() == "a user's own file"  # not the build's: kept
    listed = {s.file for s in Manifest.load(mapped).shards}
    assert {p.name for p in mapped.glob("*.tfrecord")} == listed  # the older plan's shards went
    assert old_shards - listed  # another shard size: the older plan had other names
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text("not a build's manifest")
    refused = _cli_build(str(drop), "--out", fakefs.url(foreign), *beam)
    assert refused.exit_code == 1 and "fusion-build did not write" in refused.output
    assert (foreign / "manifest.json").read_text() == "not a build's manifest"


def test_a_failed_build_to_a_url_leaves_no_manifest(drop: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed before the manifest")

    mapped = tmp_path / "shards"
    monkeypatch.setattr(records, "_manifest", killed)
    with pytest.raises(records.BuildError, match="No manifest"):
        beam_engine.build(drop, fakefs.url(mapped), workers=1, progress=False, beam_options=IN_PROCESS)
    assert not (mapped / "manifest.json").exists() and list(mapped.glob("*.tfrecord"))
    monkeypatch.undo()
    again = _cli_build(str(drop), "--out", fakefs.url(mapped), "--engine", "beam",
                       "--beam-options", IN_PROCESS)
    assert again.exit_code == 1 and "an unfinished build" in again.output


@pytest.mark.parametrize(("engine", "says"), [
    ("local", "is a URL; --engine local writes to a local folder only"),
    ("beam", "this Beam install has no filesystem for nosuch://"),
])
def test_an_out_url_no_engine_can_write_is_a_one_line_usage_error(
        drop: Path, engine: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "fakefs:///nowhere/shards" if engine == "local" else "nosuch://bucket/shards"
    monkeypatch.chdir(tmp_path)
    result = _cli_build(str(drop), "--out", url, "--engine", engine)
    assert not list(tmp_path.iterdir())  # no "fakefs:" folder made of the URL
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1
    assert not Path("/nowhere").exists()


# --- inputs by URL: the converter reads the JPEGs and DICOMs through FileSystems ---------------


def _as_urls(case: object) -> object:
    """The case with every input path as its fakefs:// URL."""
    import dataclasses

    return dataclasses.replace(
        case, render_paths={w: fakefs.url(p) for w, p in case.render_paths.items()},
        dicom_path=fakefs.url(case.dicom_path) if case.dicom_path else None)


@pytest.fixture(scope="module")
def dicom_drop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A drop with renders and DICOMs (and the writer's broken inputs, a corrupt DICOM among them)."""
    root = tmp_path_factory.mktemp("beam-dicom") / "drop"
    synth.write_synthetic_drop(root, n_patients=4, slices_per_patient=2, size=32, seed=5)
    return root


@pytest.mark.parametrize("source", ["render", "dicom"])
def test_make_example_reads_url_inputs_to_the_same_bytes(dicom_drop: Path, source: str) -> None:
    from data_build import convert
    from data_build.drop import discover

    found = discover(dicom_drop, source=source)
    options = convert.ConvertOptions(source=source)
    outcomes = set()
    for case in found.cases:
        here, there = convert.make_example(case, options), convert.make_example(_as_urls(case), options)
        outcomes.add(type(here).__name__)
        if isinstance(here, convert.Converted):
            assert isinstance(there, convert.Converted) and there.serialized == here.serialized
        else:  # the same skip, naming the URL it could not use
            assert (there.id, there.reason) == (here.id, here.reason)
    assert "Converted" in outcomes


def test_a_missing_url_input_is_a_counted_skip(dicom_drop: Path, tmp_path: Path) -> None:
    import dataclasses

    from data_build import convert
    from data_build.drop import discover

    case = next(c for c in discover(dicom_drop, source="render").cases if len(c.render_paths) == 4)
    gone = dict(_as_urls(case).render_paths, brain_window=fakefs.url(tmp_path / "gone.jpg"))
    skip = convert.make_example(dataclasses.replace(case, render_paths=gone))
    assert skip.reason == "missing-image" and skip.path == fakefs.url(tmp_path / "gone.jpg")
    dicom_case = dataclasses.replace(case, source="dicom", dicom_path=fakefs.url(tmp_path / "gone.dcm"))
    skip = convert.make_example(dicom_case, convert.ConvertOptions(source="dicom"))
    assert skip.reason == "corrupt-dicom" and "no such file" in skip.detail


def test_beam_workers_read_url_inputs_to_the_local_engines_shards(both: tuple, drop: Path,
                                                                  tmp_path: Path) -> None:
    """The plan's cases carry URLs; multi-processing workers open them through FileSystems.
    (Discovery itself still walks a local folder: the URLs are put in here.)"""
    import dataclasses

    from data_build.drop import discover

    local, _, _ = both
    found = discover(drop, source="render")
    by_url = dataclasses.replace(found, cases=[_as_urls(c) for c in found.cases])
    out = tmp_path / "out"
    beam_engine._build_drop(by_url, fakefs.url(out), 2, 4, False, None, (0.8, 0.1, 0.1),
                            records.splits.DEFAULT_SALT, records.splits.DEFAULT_METHOD,
                            beam_engine.pipeline_options("", 2), "")
    assert _shards(out) == _shards(local)


# --- a drop given as a URL: discovery lists and reads it through FileSystems -------------------


def _mapped(text: str, root: Path) -> str:
    return text.replace(fakefs.url(root), str(root))


def test_discovery_of_a_url_drop_equals_the_local_one(dicom_drop: Path) -> None:
    """Same cases (paths as URLs), skips, warnings and stats, for either source."""
    from data_build.drop import discover

    for source in ("render", "dicom"):
        here, there = discover(dicom_drop, source=source), discover(fakefs.url(dicom_drop), source=source)
        assert [_as_urls(c) for c in here.cases] == there.cases and here.cases
        assert [(s.id, s.reason, s.detail, s.path) for s in here.skips] == [
            (s.id, s.reason, _mapped(s.detail, dicom_drop), _mapped(s.path, dicom_drop))
            for s in there.skips]
        assert here.warnings == [_mapped(w, dicom_drop) for w in there.warnings]
        assert here.stats == there.stats and here.window_set == there.window_set
        assert str(there.root) == fakefs.url(dicom_drop)


def test_a_url_drop_builds_the_local_engines_shards(both: tuple, drop: Path, tmp_path: Path) -> None:
    """ROOT and --out as URLs, multi-processing workers: nothing read or written by local path."""
    local, _, _ = both
    mapped = tmp_path / "shards"
    result = _cli_build(fakefs.url(drop), "--out", fakefs.url(mapped), "--engine", "beam",
                        "--workers", "2", "--shard-size", "4")
    assert result.exit_code == 0, result.output
    assert _shards(mapped) == _shards(local)
    ours, theirs = Manifest.load(mapped), Manifest.load(local)
    assert ours.shards == theirs.shards and ours.counts == theirs.counts
    assert [(s.id, s.reason) for s in ours.skipped] == [(s.id, s.reason) for s in theirs.skipped]
    assert ours.drop["root"] == fakefs.url(drop)
    assert CliRunner().invoke(cli.verify, [str(mapped)]).exit_code == 0


def test_a_url_dicom_drop_builds_the_local_engines_hu_shards(dicom_drop: Path, tmp_path: Path) -> None:
    records.build(dicom_drop, tmp_path / "local", workers=1, source="dicom", progress=False)
    beam_engine.build(fakefs.url(dicom_drop), fakefs.url(tmp_path / "beam"), workers=1, source="dicom",
                      progress=False, beam_options=IN_PROCESS)
    assert _shards(tmp_path / "beam") == _shards(tmp_path / "local") != {}


@pytest.mark.parametrize(("make", "says"), [
    ("nothing", "does not exist or is not a folder"),
    ("no-labels", "labels file"),
])
def test_an_unusable_url_drop_is_a_one_line_error(tmp_path: Path, make: str, says: str) -> None:
    root = tmp_path / "drop"
    if make == "no-labels":
        synth.write_synthetic_drop(root, n_patients=2, slices_per_patient=1, size=32, seed=1,
                                   dicoms=False)
        (root / "hemorrhage-labels.csv").unlink()
    result = _cli_build(fakefs.url(root), "--out", fakefs.url(tmp_path / "out"), "--engine", "beam",
                        "--beam-options", IN_PROCESS)
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_header_reading_processes_open_url_dicoms(dicom_drop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned header readers import the driver's filesystems (fakefs:// is a plugin here)."""
    from data_build import drop as drop_module

    paths = sorted(str(p) for p in dicom_drop.rglob("*.dcm"))[:4]
    monkeypatch.setattr(drop_module, "HEADER_CHUNK", 2)  # two chunks: the process pool runs
    local = drop_module.read_headers(paths, workers=2)
    remote = drop_module.read_headers([fakefs.url(p) for p in paths], workers=2)
    assert [remote[fakefs.url(p)] for p in paths] == [local[p] for p in paths]
    assert any(isinstance(m, drop_module.dicom.DicomMeta) for m in local.values())


# --- local paths: absolute for the workers, a warning off DirectRunner ------------------------


def test_local_paths_reach_the_workers_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert beam_engine._absolute(Path("tfrecords")) == tmp_path / "tfrecords"
    assert beam_engine._absolute("gs://bucket/tfrecords") == "gs://bucket/tfrecords"


def test_local_paths_on_a_cluster_runner_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flink = beam_engine.pipeline_options("--runner=FlinkRunner", 2)
    with caplog.at_level("WARNING", logger="data_build.beam_engine"):
        beam_engine._warn_local_paths_off_direct(flink, tmp_path / "drop", "s3://bucket/out")
    assert "ROOT" in caplog.text and "shared mount" in caplog.text and "--out" not in caplog.text
    caplog.clear()
    direct = beam_engine.pipeline_options("", 2)
    with caplog.at_level("WARNING", logger="data_build.beam_engine"):
        beam_engine._warn_local_paths_off_direct(direct, tmp_path / "drop", tmp_path / "out")
        beam_engine._warn_local_paths_off_direct(flink, "s3://bucket/drop", "s3://bucket/out")
    assert not caplog.text
