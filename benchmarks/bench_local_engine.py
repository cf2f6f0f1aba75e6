"""The local engine's scaling and memory (issue 14): `fusion-build` end to end, this tree against
another version of the package ("before"), side by side in one run, interleaved repetitions.

    python benchmarks/bench_local_engine.py --before /path/to/old/checkout \\
        --slices 1000,10000 --workers 1,2 --repeats 3 --workdir /tmp/bench-engine

Per build it measures wall time (slices/s), the CPU time of the main process and of its
workers (user + system, `getrusage`), and the peak RSS of the whole process tree (sampled
every 0.1 s). On a shared machine wall time is noise; CPU per slice is not. The main process
is serial: at M ms of its CPU per extra slice (between two drop sizes, so start-up cancels),
no worker count gets past 1000 / M slices/s; the script prints that cap. Shards of both
versions are compared by sha256 (from the manifests).

Drops are made from the real DICOMs (`real_drop.make_drop`), once per size, under --workdir.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_memory import wait_with_peak_rss  # noqa: E402
from real_drop import REAL, make_drop  # noqa: E402

THIS_TREE = Path(__file__).resolve().parents[1]

#: Runs `fusion-build` in this process and writes its own and its workers' CPU seconds.
RUNNER = """
import json, resource, sys, time
import data_build
from data_build import cli
root, out, workers, shard_size, report = sys.argv[1:6]
start = time.perf_counter()
cli.build.main([root, "--out", out, "--workers", workers, "--shard-size", shard_size,
                "--overwrite", "--no-progress"], standalone_mode=False)
wall = time.perf_counter() - start
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
with open(report, "w") as fh:
    json.dump({"wall": wall, "main_cpu": me.ru_utime + me.ru_stime,
               "workers_cpu": kids.ru_utime + kids.ru_stime, "package": data_build.__file__}, fh)
"""


def run_build(tree: Path, root: Path, out: Path, workers: int, shard_size: int) -> dict[str, float]:
    """One `fusion-build` of `tree`'s package in a subprocess: wall and CPU seconds, peak MiB."""
    report = out.with_suffix(".json")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-c", RUNNER, str(root), str(out), str(workers), str(shard_size), str(report)]
    # `python -c` puts the working folder first on sys.path: run in `tree`, or another
    # checkout's data_build there would shadow the one being measured.
    proc = subprocess.Popen(cmd, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, err = wait_with_peak_rss(proc)
    if proc.returncode != 0:
        raise SystemExit(f"fusion-build ({tree}) failed: {err.decode()[-2000:]}")
    result = json.loads(report.read_text())
    if not Path(result.pop("package")).resolve().is_relative_to(tree):
        raise SystemExit(f"measured the wrong data_build: wanted the one in {tree}")
    return {**result, "peak_mib": peak / 2**20}


def shard_hashes(out: Path) -> list[tuple[str, str]]:
    return [(s["file"], s["sha256"]) for s in json.loads((out / "manifest.json").read_text())["shards"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, default=None,
                        help="source tree of the version to compare with (its data_build is run)")
    parser.add_argument("--slices", default="1000,10000")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dicom-dir", type=Path, default=REAL / "rsna-dicom")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fusion-engine-"))
    trees = {"after": THIS_TREE} | ({"before": args.before.resolve()} if args.before else {})
    sizes = [int(s) for s in args.slices.split(",") if s]
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    load_start = os.getloadavg()
    runs: dict[tuple[int, int, str], list[dict[str, float]]] = {}
    for n in sizes:
        root = work / f"drop-{n}"
        if not (root / "hemorrhage-labels.csv").exists():
            make_drop(root, n, args.dicom_dir)
    for _ in range(args.repeats):  # interleaved, so machine noise hits every column alike
        for n in sizes:
            for workers in worker_counts:
                for name, tree in trees.items():
                    out = work / f"out-{name}-{n}-{workers}"
                    runs.setdefault((n, workers, name), []).append(
                        run_build(tree, work / f"drop-{n}", out, workers, args.shard_size))
    load_end = os.getloadavg()

    print(f"\nrepeats: {args.repeats} (medians), shard size {args.shard_size}, cores: {os.cpu_count()}, "
          f"load average (1 min) at start {load_start[0]:.1f}, at end {load_end[0]:.1f}\n")
    print("| slices | workers | version | slices/s | main process CPU ms/slice | workers CPU ms/slice "
          "| peak RSS, process tree (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for (n, workers, name), rs in runs.items():
        rate = statistics.median(n / r["wall"] for r in rs)
        main_ms = statistics.median(1000 * r["main_cpu"] / n for r in rs)
        workers_ms = statistics.median(1000 * r["workers_cpu"] / n for r in rs)
        peak = statistics.median(r["peak_mib"] for r in rs)
        print(f"| {n:,} | {workers} | {name} | {rate:.0f} | {main_ms:.3f} | {workers_ms:.2f} | {peak:,.0f} |")
    if len(sizes) > 1:  # fixed costs (start-up, imports) cancel out between two drop sizes
        small, large = min(sizes), max(sizes)
        print(f"\nmain process CPU per extra slice, {small:,} -> {large:,} slices:")
        for workers in worker_counts:
            for name in trees:
                cpu = [statistics.median(r["main_cpu"] for r in runs[(n, workers, name)]) for n in (small, large)]
                ms = 1000 * (cpu[1] - cpu[0]) / (large - small)
                cap = f", cap {1000 / ms:,.0f} slices/s" if workers > 1 and ms > 0 else ""
                print(f"- {workers} worker(s), {name}: {ms:.3f} ms{cap}")
    if "before" in trees:
        for n in sizes:
            hashes = {shard_hashes(work / f"out-{name}-{n}-{w}") == shard_hashes(work / f"out-after-{n}-1")
                      for name in trees for w in worker_counts}
            print(f"\n{n:,} slices: shards {'byte-identical' if hashes == {True} else 'DIFFER'} "
                  "across versions and worker counts (manifest sha256)")


if __name__ == "__main__":
    main()
