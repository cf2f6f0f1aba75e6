"""fusion-synth / fusion-build / fusion-verify through click's CliRunner, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data_build import cli
from data_build.synth import writer as synth
from data_build.windows import WINDOW_NAMES
from fusion import data

#: What each planted broken input becomes in the manifest.
BROKEN_TO_SKIP = {
    "corrupt-jpeg": "corrupt-image",
    "missing-window": "missing-window",
    "malformed-polygon": "malformed-polygon",
    "corrupt-dicom": "corrupt-dicom",
}


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthSummary]:
    root = tmp_path_factory.mktemp("synth") / "drop"
    summary = synth.write_synthetic_drop(root, n_patients=5, slices_per_patient=3, size=64, seed=1)
    return root, summary


def _run(command: object, *args: object) -> object:
    result = CliRunner().invoke(command, [str(a) for a in args])  # type: ignore[arg-type]
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_help_teaches() -> None:
    for command, words in ((cli.build, "--resume"), (cli.synth, "--window-set"), (cli.verify, "manifest")):
        result = _run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output and words in result.output


def test_synth_difficulty_option(tmp_path: Path) -> None:
    shown = _run(cli.synth, "--help")
    assert "--difficulty [easy|real]" in shown.output and "default: real" in shown.output
    assert "calibrated to real" in shown.output and "byte-identical" in shown.output
    args = ["--patients", 2, "--slices-per-patient", 1, "--size", 32, "--no-dicoms", "--no-progress"]
    real = _run(cli.synth, tmp_path / "real", *args)
    easy = _run(cli.synth, tmp_path / "easy", *args, "--difficulty", "easy")
    assert real.exit_code == 0 and "(real phantom)" in real.output
    assert easy.exit_code == 0 and "(easy phantom)" in easy.output
    jpegs = {k: sorted(p.read_bytes() for p in (tmp_path / k / "renders").rglob("*.jpg"))
             for k in ("real", "easy")}
    assert jpegs["real"] != jpegs["easy"]
    bad = _run(cli.synth, tmp_path / "bad", *args, "--difficulty", "hard")
    assert bad.exit_code == 2 and "'easy', 'real'" in bad.output
    assert not (tmp_path / "bad").exists()


def test_real_phantom_drop_builds_with_only_the_planted_skips(tmp_path: Path) -> None:
    # Small and thin bleeds, skull base and calcifications must not trip the builder: every
    # skip is one that the writer planted or flagged, in both sources.
    root = tmp_path / "real"
    summary = synth.write_synthetic_drop(root, n_patients=6, slices_per_patient=3, size=64,
                                         seed=2, difficulty="real")
    assert summary.n_with_polygons > 0
    planted = set(BROKEN_TO_SKIP.values()) | {"flagged"}
    for source in ("render", "dicom"):
        result = _run(cli.build, root, "--out", tmp_path / source, "--source", source,
                      "--workers", 1, "--no-progress")
        assert result.exit_code == 0, result.output
        lines = result.output.split("Skipped or masks left unknown:")[1].splitlines()[1:]
        named = set()
        for line in lines:  # the indented "  reason: count" lines under the heading
            if not line.startswith("  "):
                break
            named.add(line.split(":")[0].strip())
        assert named and named <= planted, result.output


def test_missing_root_or_labels_exit_2_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = _run(cli.build, tmp_path / "nowhere", "--out", out, "--workers", 1)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not out.exists()
    (tmp_path / "empty" / "renders").mkdir(parents=True)
    result = _run(cli.build, tmp_path / "empty", "--out", out, "--workers", 1)
    assert result.exit_code == 2 and "hemorrhage-labels.csv" in result.output
    assert not out.exists()


def test_synth_build_verify_read(drop: tuple[Path, synth.SynthSummary], tmp_path: Path) -> None:
    root, summary = drop
    out = tmp_path / "shards"
    result = _run(cli.build, root, "--out", out, "--workers", 1, "--shard-size", 4,
                  "--split-fractions", "0.6,0.2,0.2", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "Manifest:" in result.output and "corrupt-image: 1" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {(s["id"], s["reason"]) for s in manifest["skipped"]}
    for item in summary.broken:
        if item.kind != "corrupt-dicom":  # renders build: DICOM pixels are never read
            assert (item.id, BROKEN_TO_SKIP[item.kind]) in reasons, item
    for flagged in summary.flagged:
        assert (flagged, "flagged") in reasons
    written = sum(c["slices"] for c in manifest["counts"].values())
    dropped = {i for i, r in reasons if r in ("corrupt-image", "missing-window", "flagged")}
    assert written == summary.n_slices - len(dropped)

    result = _run(cli.verify, out, "--no-progress")
    assert result.exit_code == 0 and result.output.startswith("ok:")

    split = next(s for s, c in manifest["counts"].items() if c["slices"])
    batch = next(iter(data.make_dataset(out, split, image_size=32, batch_size=2)))
    assert batch["image"].shape == (2, 32, 32, len(WINDOW_NAMES))
    assert 0.0 <= float(np.min(batch["image"])) and float(np.max(batch["image"])) <= 1.0

    # Second run: refused, then resumed (nothing to redo), then overwritten.
    again = _run(cli.build, root, "--out", out, "--workers", 1, "--no-progress")
    assert again.exit_code == 1 and "--overwrite" in again.output
    resumed = _run(cli.build, root, "--out", out, "--workers", 1, "--shard-size", 4,
                   "--split-fractions", "0.6,0.2,0.2", "--resume", "--no-progress")
    assert resumed.exit_code == 0 and "0 shards written" in resumed.output
    mismatch = _run(cli.build, root, "--out", out, "--workers", 1, "--resume", "--no-progress")
    assert mismatch.exit_code == 1 and "cannot resume" in mismatch.output

    # A damaged shard makes verify fail with status 1.
    shard = out / manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    result = _run(cli.verify, out, "--no-progress")
    assert result.exit_code == 1 and "problems" in result.output and shard.name in result.output


def test_dicom_source_counts_corrupt_dicom(drop: tuple[Path, synth.SynthSummary], tmp_path: Path) -> None:
    root, summary = drop
    out = tmp_path / "dicom"
    result = _run(cli.build, root, "--out", out, "--source", "dicom", "--workers", 1,
                  "--window", "subdural_window=75,215", "--no-progress")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "dicom" and manifest["presets"]["subdural_window"] == [75.0, 215.0]
    corrupt = [b.id for b in summary.broken if b.kind == "corrupt-dicom"]
    assert corrupt and all(
        any(s["id"] == i and s["reason"] == "corrupt-dicom" for s in manifest["skipped"]) for i in corrupt
    )


def test_strict_stops_with_reason(drop: tuple[Path, synth.SynthSummary], tmp_path: Path) -> None:
    root, _ = drop
    result = _run(cli.build, root, "--out", tmp_path / "s", "--workers", 1, "--strict", "--no-progress")
    assert result.exit_code == 1 and "strict build stopped" in result.output
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_bad_options_are_usage_errors(drop: tuple[Path, synth.SynthSummary], tmp_path: Path) -> None:
    root, _ = drop
    bad_window = _run(cli.build, root, "--out", tmp_path / "x", "--window", "lung=1,2")
    assert bad_window.exit_code == 2 and "unknown window" in bad_window.output
    bad_split = _run(cli.build, root, "--out", tmp_path / "x", "--split-fractions", "0.9,0.9,0.1")
    assert bad_split.exit_code == 2 and "sum to 1" in bad_split.output
    assert not (tmp_path / "x").exists()


def test_nothing_written_exits_1(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    for name in WINDOW_NAMES:
        path = root / "renders" / "normal" / name / "ID_000000001.jpg"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a jpeg")
    (root / "hemorrhage-labels.csv").write_text(
        "Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural\n"
        "ID_000000001,0,0,0,0,0,0\n"
    )
    result = _run(cli.build, root, "--out", tmp_path / "out", "--workers", 1, "--no-progress")
    assert result.exit_code == 1 and "nothing could be written" in result.output
    assert "corrupt-image: 1" in result.output


def test_synth_cli_refuses_then_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "drop"
    args = ["--patients", 1, "--slices-per-patient", 2, "--size", 32, "--no-dicoms", "--no-progress"]
    first = _run(cli.synth, out, *args)
    assert first.exit_code == 0 and "fusion-build" in first.output
    assert (out / "hemorrhage-labels.csv").exists()
    refused = _run(cli.synth, out, *args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert _run(cli.synth, out, *args, "--overwrite").exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    kept = _run(cli.synth, tmp_path / "mine", *args, "--overwrite")
    assert kept.exit_code == 1 and (tmp_path / "mine" / "thesis.tex").exists()


KILLED_BUILD = """
import sys, time
from data_build import convert, records
root, out = sys.argv[1], sys.argv[2]
append, make = records._append_progress, convert.make_example
shards = []

def append_and_tell(out_dir, entry):
    append(out_dir, entry)
    if entry.get("kind") == "shard":
        shards.append(entry)
        print("SHARD", flush=True)  # the parent kills us now, in the next shard

def slow_make(*args, **kwargs):
    if shards:
        time.sleep(0.5)  # after the first shard: slow, so the kill lands mid-shard
    return make(*args, **kwargs)

records._append_progress = append_and_tell
convert.make_example = slow_make
records.build(root, out, workers=1, shard_size=4, progress=False)
print("FINISHED", flush=True)
"""


def test_build_killed_with_sigkill_resumes_to_the_same_shards(
    drop: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    root, _ = drop
    clean = tmp_path / "clean"
    assert _run(cli.build, root, "--out", clean, "--workers", "1", "--shard-size", "4").exit_code == 0
    out = tmp_path / "killed"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(root), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()  # blocks until the first shard is logged
        assert line.strip() == "SHARD", f"the build ended before its first shard: {line!r}"
        deadline = time.monotonic() + 30
        while not list(out.glob(".*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.02)  # wait until the next shard is half written
        assert list(out.glob(".*.tmp")), "the second shard never started"
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: what a power cut or OOM kill leaves
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()  # nothing that looks like a finished build
    assert list(out.glob(".*.tmp"))  # the half-written shard, under a temporary name
    refused = _run(cli.build, root, "--out", out, "--workers", "1", "--shard-size", "4")
    assert refused.exit_code == 1 and "--resume" in refused.output, refused.output
    resumed = _run(cli.build, root, "--out", out, "--workers", "1", "--shard-size", "4", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert not list(out.glob(".*.tmp"))
    shard_bytes = lambda d: {p.name: p.read_bytes() for p in d.glob("*.tfrecord")}  # noqa: E731
    assert shard_bytes(out) == shard_bytes(clean)
    assert _run(cli.verify, out).exit_code == 0


@pytest.mark.parametrize(("where", "says"), [
    ("out", "--out gs://bucket/shards is a URL; --engine local writes to a local folder only"),
    ("root", "ROOT gs://bucket/drop is a URL; --engine local reads a local folder (or a mount) only"),
])
def test_urls_the_local_build_cannot_use_are_one_line_usage_errors(
        drop: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, says: str) -> None:
    """Without Apache Beam too: a URL must not become a local folder named "gs:"."""
    root = "gs://bucket/drop" if where == "root" else str(drop[0])
    monkeypatch.chdir(tmp_path)
    result = _run(cli.build, root, "--out", "gs://bucket/shards", "--no-progress")
    assert result.exit_code == 2 and says in " ".join(result.output.split())
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())
