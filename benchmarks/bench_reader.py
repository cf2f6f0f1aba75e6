"""The TensorFlow-free reader (`fusion.reader`) against the decode floor and the tf.data reader.

Side by side in one run, interleaved repeats, medians: CPU ms per slice (user + system, all
threads and worker processes) of

- the decode floor, TensorFlow's (`bench_build.decode_floor_dataset`) and OpenCV's
  (`bench_build.decode_floor_numpy`): parse + four JPEG decodes at the DCT scale, nothing else;
- the new reader (`fusion.reader.ShardSequence`, the reader's dicts, one process);
- the tf.data reader (`fusion.data.make_dataset`);

at 512 and 256 px, and the new reader's batches shared out over 1 and 2 forked worker
processes (as `keras.utils.PyDataset(workers=N, use_multiprocessing=True)` does), as wall
slices/s and CPU ms/slice.

    python benchmarks/bench_reader.py --slices 500 --repeats 5 \\
        [--workdir W] [--dicoms ../shared/data/real/rsna-dicom]

Inputs: `benchmarks/real_drop.py` renders of the real RSNA DICOMs (512 px JPEG windows).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import (  # noqa: E402
    BATCH,
    count_batches,
    decode_floor_dataset,
    decode_floor_numpy,
    our_build,
    our_dataset,
)
from real_drop import REAL, make_drop  # noqa: E402

_SEQUENCE = None  # the reader a forked worker inherits


def reader_batches(out: Path, size: int):
    from fusion.reader import ShardSequence

    sequence = ShardSequence(out, "train", image_size=size, batch_size=BATCH, as_dicts=True)
    return (sequence.batch(i) for i in range(len(sequence)))


def _batch_size_of(index: int) -> int:
    return int(_SEQUENCE.batch(index)["image"].shape[0])


def pool_read(out: Path, size: int, workers: int) -> int:
    """Slices read with the batches shared out over `workers` forked processes, in order."""
    global _SEQUENCE
    from fusion.reader import ShardSequence

    _SEQUENCE = ShardSequence(out, "train", image_size=size, batch_size=BATCH, as_dicts=True)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        # Sizes only come back: the timing is the workers' decode, not pickling the batches.
        n = sum(pool.imap(_batch_size_of, range(len(_SEQUENCE))))
        pool.close()
        pool.join()
    return n


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args) -> tuple[float, int, float]:
    start, cpu = time.perf_counter(), cpu_seconds()
    n = fn(*args)
    return time.perf_counter() - start, n, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dicoms", type=Path, default=REAL / "rsna-dicom")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fusion-bench-reader-"))
    root, out = work / "drop", work / "ours"
    if not (root / "hemorrhage-labels.csv").exists():
        make_drop(root, args.slices, args.dicoms)
    if not (out / "manifest.json").exists():
        our_build(root, out, 1)

    readers = {
        "decode floor, TensorFlow": lambda size: count_batches(decode_floor_dataset(out, size)),
        "decode floor, OpenCV": lambda size: count_batches(decode_floor_numpy(out, size)),
        "fusion.reader": lambda size: count_batches(reader_batches(out, size)),
        "fusion.data (tf.data)": lambda size: count_batches(our_dataset(out, size)),
    }
    rates: dict[str, list[float]] = {}
    cpu_ms: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        for size in (512, 256):
            for name, read in readers.items():
                seconds, n, cpu = timed(read, size)
                rates.setdefault(f"{name} {size}", []).append(n / seconds)
                cpu_ms.setdefault(f"{name} {size}", []).append(1000.0 * cpu / n)
            for workers in (1, 2):
                seconds, n, cpu = timed(pool_read, out, size, workers)
                rates.setdefault(f"workers {workers} {size}", []).append(n / seconds)
                cpu_ms.setdefault(f"workers {workers} {size}", []).append(1000.0 * cpu / n)

    med = {k: statistics.median(v) for k, v in rates.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    print(f"\nslices: {args.slices}, repeats: {args.repeats}, cores: {os.cpu_count()}, "
          f"load average at the end: {os.getloadavg()[0]:.1f}\n")
    print("| CPU ms/slice (median) | " + " | ".join(readers) + " | reader / OpenCV floor | "
          "reader / TensorFlow floor |")
    print("|---|" + "---|" * (len(readers) + 2))
    for size in (512, 256):
        row = [f"{mcpu[f'{name} {size}']:.2f}" for name in readers]
        reader_cpu = mcpu[f"fusion.reader {size}"]
        floor_cv, floor_tf = mcpu[f"decode floor, OpenCV {size}"], mcpu[f"decode floor, TensorFlow {size}"]
        print(f"| {size} px | " + " | ".join(row) + f" | {reader_cpu / floor_cv:.2f}x"
              f" | {reader_cpu / floor_tf:.2f}x |")
    print("\n| fusion.reader, forked workers | 1 worker: slices/s, CPU ms/slice | "
          "2 workers: slices/s, CPU ms/slice | 2 / 1 slices/s |")
    print("|---|---|---|---|")
    for size in (512, 256):
        one, two = f"workers 1 {size}", f"workers 2 {size}"
        print(f"| {size} px | {med[one]:.0f}, {mcpu[one]:.2f} | {med[two]:.0f}, {mcpu[two]:.2f} | "
              f"{med[two] / med[one]:.2f}x |")
    print()
    for key in sorted(rates):
        print(f"{key}: slices/s {[round(x) for x in rates[key]]}, "
              f"CPU ms/slice {[round(x, 2) for x in cpu_ms[key]]}")


if __name__ == "__main__":
    main()
