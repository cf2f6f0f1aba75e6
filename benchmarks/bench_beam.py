"""`fusion-build --engine beam` (DirectRunner) against `--engine local`, side by side, one run.

Each engine builds the same drop of 512 px renders made from the real DICOMs
(`benchmarks/real_drop.py`) end to end in a subprocess (discovery, conversion, shards,
manifest), with the same ``--workers``; the engines alternate, so machine noise hits both alike.
Peak memory is the resident set of the whole process tree (the driver, the local engine's pool
or DirectRunner's worker processes, found through every thread's children), polled every
0.1 s. After each pair the two folders' shards are compared byte for byte.

    python benchmarks/bench_beam.py --slices 1000,10000 --workers 2 --workdir /tmp/bench-beam

Needs Apache Beam (``pip install 'fusion[beam]'``; `make test-beam` makes a virtualenv with
it) and ../shared/data/real (or ``--dicoms``). Prints a Markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_memory import wait_with_peak_rss  # noqa: E402
from real_drop import REAL, make_drop  # noqa: E402

ENGINES = ("local", "beam")


def run_build(root: Path, out: Path, engine: str, workers: int) -> tuple[float, float]:
    """One `fusion-build` in a subprocess: (peak RSS of its process tree in MiB, wall seconds)."""
    cmd = [str(Path(sys.executable).parent / "fusion-build"), str(root), "--out", str(out),
           "--workers", str(workers), "--engine", engine, "--overwrite", "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, err = wait_with_peak_rss(proc)
    if proc.returncode != 0:
        raise SystemExit(f"fusion-build --engine {engine} failed: {err.decode()[-2000:]}")
    return peak / 2**20, time.perf_counter() - start


def same_shards(a: Path, b: Path) -> bool:
    """Whether two build folders hold the same shard files, byte for byte."""
    names = sorted(p.name for p in a.glob("*.tfrecord"))
    if names != sorted(p.name for p in b.glob("*.tfrecord")):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", default="1000,10000", help="drop sizes, comma-separated")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dicoms", type=Path, default=REAL / "rsna-dicom")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fusion-bench-beam-"))
    print(f"workers: {args.workers}, cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    rows = []
    for n in (int(s) for s in args.slices.split(",") if s):
        root = work / f"drop-{n}"
        if not (root / "hemorrhage-labels.csv").exists():
            make_drop(root, n, args.dicoms)
        for repeat in range(args.repeats):
            for engine in ENGINES if repeat % 2 == 0 else ENGINES[::-1]:
                peak, secs = run_build(root, work / f"{engine}-{n}", engine, args.workers)
                rows.append((n, engine, peak, secs, os.getloadavg()[0]))
                print(f"  {n} slices, {engine}: {secs:.1f} s, {n / secs:.0f} slices/s, "
                      f"peak {peak:,.0f} MiB, load {rows[-1][4]:.1f}", flush=True)
        identical = same_shards(work / f"local-{n}", work / f"beam-{n}")
        print(f"  {n} slices: shards byte-identical: {identical}", flush=True)
    print("\n| slices | engine | workers | seconds | slices/s | peak RSS, process tree (MiB) "
          "| 1-min load average after |")
    print("|---|---|---|---|---|---|---|")
    for n, engine, peak, secs, load in rows:
        print(f"| {n:,} | {engine} | {args.workers} | {secs:.1f} | {n / secs:.0f} | {peak:,.0f} "
              f"| {load:.1f} |")


if __name__ == "__main__":
    main()
