"""The TensorFlow-free reader (`fusion.reader`) against the decode floor and the tf.data reader.

Side by side in one run, interleaved repeats, medians: CPU ms per slice (user + system, all
threads and worker processes) of

- the decode floor, TensorFlow's (`bench_build.decode_floor_dataset`) and OpenCV's
  (`bench_build.decode_floor_numpy`): parse + four JPEG decodes at the DCT scale, nothing else;
- the new reader (`fusion.reader.ShardSequence`, the reader's dicts, one process);
- the tf.data reader (`fusion.data.make_dataset`);

- the new reader on a second shard set with the users' share of masks (1 slice in 39 where
  the first has 1 in 3: the mask PNG decode is the reader's largest cost beyond the floor's);
- the new reader from its decoded cache (`fusion-train --cache`, `fusion.decoded_cache`), the
  epochs after the first, against the same reader on the shards, both also with the demo
  preset's augmentation (`fusion.augment_numpy`) on top;

at 512 and 256 px, and the new reader's batches shared out over 1 and 2 forked worker
processes (as `keras.utils.PyDataset(workers=N, use_multiprocessing=True)` does), as wall
slices/s and CPU ms/slice.

    python benchmarks/bench_reader.py --slices 300 --repeats 5 \\
        [--workdir W] [--dicoms ../shared/data/real/rsna-dicom] [--profile-only]

Inputs: `benchmarks/real_drop.py` renders of the real RSNA DICOMs (512 px JPEG windows).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
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


def reader_batches(out: Path, size: int, cache=None, augment=None):
    from fusion.reader import ShardSequence

    sequence = ShardSequence(out, "train", image_size=size, batch_size=BATCH, as_dicts=True, cache=cache,
                             augment=augment)
    return (sequence.batch(i) for i in range(len(sequence)))


def build_caches(out: Path, folder: Path) -> dict[int, tuple[object, float]]:
    """{size: (the train split's decoded cache, build CPU ms/slice)}, built once, one thread."""
    from fusion.decoded_cache import open_caches

    caches = {}
    for size in (512, 256):
        shutil.rmtree(folder / f"train-{size}px", ignore_errors=True)
        cpu = cpu_seconds()
        cache = open_caches(folder, out, ("train",), size, workers=1)["train"]
        caches[size] = (cache, 1000.0 * (cpu_seconds() - cpu) / len(cache))
    return caches


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


def profile(out: Path, size: int, reps: int = 7) -> dict[str, float]:
    """CPU ms per slice of the reader's parts on one batch of 16 (min of `reps`: the least
    disturbed timing), and per mask for the mask decode."""
    import cv2
    import numpy as np

    from data_build import schema
    from fusion import reader
    from fusion.augment_numpy import _add_noise, augment_batch, noise_field
    from fusion.config import preset

    sequence = reader.ShardSequence(out, "train", image_size=size, batch_size=BATCH, as_dicts=True)
    raws = [sequence.records.record(i) for i in range(BATCH)]
    parsed = [reader.parse_example(r) for r in raws]
    ratio = reader.jpeg_ratio(512, 512, size)
    codes = np.empty((BATCH, size, size, 4), np.uint8)
    examples = [reader.decode_record(p, size, codes_out=codes[k]) for k, p in enumerate(parsed)]
    tables = np.stack([e["table"] for e in examples])
    batch = sequence.records.read_batch(list(range(BATCH)), size)
    augment = preset("demo").augment
    every = (reader.parse_example(sequence.records.record(i)) for i in range(len(sequence.records)))
    masked = [p for p in every if p["area_pixels"] > 0][:BATCH]
    parts = {
        "read + CRC": (lambda: [sequence.records.record(i) for i in range(BATCH)], BATCH),
        "parse": (lambda: [reader.parse_example(r) for r in raws], BATCH),
        "4 JPEG decodes": (lambda: [cv2.imdecode(np.frombuffer(p[schema.image_key(n)], np.uint8),
                                                 reader._IMREAD[ratio]) for p in parsed
                                    for n in reader.windows.WINDOW_NAMES], BATCH),
        "decode_record into the uint8 batch (4 windows, mask, targets)": (
            lambda: [reader.decode_record(p, size, codes_out=codes[k]) for k, p in enumerate(parsed)], BATCH),
        "colour-map LUT to float32": (lambda: reader.codes_to_grey(codes, tables), BATCH),
        "collate (LUT, mask to float32, targets)": (lambda: reader.collate(examples, codes), BATCH),
        "read_batch (all of the above)": (
            lambda: sequence.records.read_batch(list(range(BATCH)), size), BATCH),
        "one mask decode (per masked slice)": (
            lambda: [reader.mask_u8(p, size) for p in masked], len(masked)),
        "augmentation, demo preset (on the reader's batch)": (
            lambda: augment_batch(batch, augment, np.random.default_rng(0), noise_key=(0, 0)), BATCH),
        "of which the noise (windows of the epoch's field)": (
            lambda: _add_noise(batch["image"], augment.noise_std, np.random.default_rng(0), (0, 0)), BATCH),
        "the noise as drawn before (one normal per pixel and window)": (
            lambda: np.clip(batch["image"] + augment.noise_std * np.random.default_rng(0).standard_normal(
                batch["image"].shape, dtype=np.float32), 0.0, 1.0), BATCH),
    }
    noise_field((0, 0), size, size, 4)  # drawn once per epoch and worker, not per batch
    out_ms = {}
    for name, (fn, n) in parts.items():
        best = float("inf")
        for _ in range(reps):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        out_ms[name] = 1000.0 * best / max(n, 1)
    return out_ms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--dicoms", type=Path, default=REAL / "rsna-dicom")
    parser.add_argument("--profile-only", action="store_true",
                        help="only time the reader's parts on one batch")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fusion-bench-reader-"))
    root, out = work / "drop", work / "ours"
    rare_root, rare = work / "drop-rare-masks", work / "ours-rare-masks"
    for drop, shards, every in ((root, out, None), (rare_root, rare, 39)):
        if not (drop / "hemorrhage-labels.csv").exists():
            make_drop(drop, args.slices, args.dicoms, mask_every=every)
        if not (shards / "manifest.json").exists():
            our_build(drop, shards, 1)

    if args.profile_only:
        for size in (512, 256):
            for name, ms in profile(out, size).items():
                print(f"{size} px | {name}: {ms:.2f} ms")
        return
    from fusion.config import preset

    augment = preset("demo").augment
    caches = build_caches(out, work / "cache")
    readers = {
        "decode floor, TensorFlow": lambda size: count_batches(decode_floor_dataset(out, size)),
        "decode floor, OpenCV": lambda size: count_batches(decode_floor_numpy(out, size)),
        "fusion.reader": lambda size: count_batches(reader_batches(out, size)),
        "fusion.data (tf.data)": lambda size: count_batches(our_dataset(out, size)),
    }
    others = {
        "fusion.reader, masks 1 in 39": lambda size: count_batches(reader_batches(rare, size)),
        "fusion.reader, cached": lambda size: count_batches(reader_batches(out, size, caches[size][0])),
        "fusion.reader + augmentation": lambda size: count_batches(reader_batches(out, size, None, augment)),
        "fusion.reader, cached + augmentation": lambda size: count_batches(
            reader_batches(out, size, caches[size][0], augment)),
    }
    rates: dict[str, list[float]] = {}
    cpu_ms: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
        for size in (512, 256):
            for name, read in {**readers, **others}.items():
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
    print("\n| CPU ms/slice (median) | fusion.reader, masks 1 in 3 | masks 1 in 39 | "
          "reader (1 in 39) / OpenCV floor |")
    print("|---|---|---|---|")
    for size in (512, 256):
        floor_cv, rare_cpu = mcpu[f"decode floor, OpenCV {size}"], mcpu[f"fusion.reader, masks 1 in 39 {size}"]
        print(f"| {size} px | {mcpu[f'fusion.reader {size}']:.2f} | {rare_cpu:.2f} | {rare_cpu / floor_cv:.2f}x |")
    print("\n| one thread: slices/s, CPU ms/slice (median) | from the shards | from the cache | "
          "cached / uncached slices/s | + augmentation, shards | + augmentation, cache | ratio | "
          "cache build, CPU ms/slice |")
    print("|---|---|---|---|---|---|---|---|")
    for size in (512, 256):
        cells = []
        for plain, cached in (("fusion.reader", "fusion.reader, cached"),
                              ("fusion.reader + augmentation", "fusion.reader, cached + augmentation")):
            a, b = f"{plain} {size}", f"{cached} {size}"
            cells += [f"{med[a]:.0f}, {mcpu[a]:.2f}", f"{med[b]:.0f}, {mcpu[b]:.2f}", f"{med[b] / med[a]:.2f}x"]
        print(f"| {size} px | " + " | ".join(cells) + f" | {caches[size][1]:.2f} |")
    print("\n| fusion.reader, forked workers | 1 worker: slices/s, CPU ms/slice | "
          "2 workers: slices/s, CPU ms/slice | 2 / 1 slices/s |")
    print("|---|---|---|---|")
    for size in (512, 256):
        one, two = f"workers 1 {size}", f"workers 2 {size}"
        print(f"| {size} px | {med[one]:.0f}, {mcpu[one]:.2f} | {med[two]:.0f}, {mcpu[two]:.2f} | "
              f"{med[two] / med[one]:.2f}x |")
    profiles = {size: profile(out, size) for size in (512, 256)}
    print("\n| reader part, CPU ms/slice (min of 7, one batch) | 512 px | 256 px |")
    print("|---|---|---|")
    for name in profiles[512]:
        print(f"| {name} | {profiles[512][name]:.2f} | {profiles[256][name]:.2f} |")
    print()
    for key in sorted(rates):
        print(f"{key}: slices/s {[round(x) for x in rates[key]]}, "
              f"CPU ms/slice {[round(x, 2) for x in cpu_ms[key]]}")


if __name__ == "__main__":
    main()
