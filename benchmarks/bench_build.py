"""Build and read benchmarks: our shards against the peer's layout, side by side, same inputs.

The peer wrote one unsharded TFRecord of float32 `tf.io.serialize_tensor` image [512, 512, 4] and
mask [512, 512], built one slice at a time. We time both on the same drop of renders made from the
real DICOMs (`benchmarks/real_drop.py`), interleaving repetitions and quoting medians.

    python benchmarks/bench_build.py --slices 1000 --repeats 3 [--memory-slices 1000,10000]
    python benchmarks/bench_build.py --workdir W --reads-only --read-passes 4 --repeats 5

Prints a Markdown table for docs/benchmarks.md. Reads are timed over ``--read-passes`` passes of
the whole set (each pass a new pipeline), and also as CPU time per slice (user + system, all
threads), which a shared machine's noise disturbs far less than wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_memory import wait_with_peak_rss  # noqa: E402
from real_drop import make_drop  # noqa: E402

from data_build import drop as drop_mod  # noqa: E402
from data_build.manifest import Manifest  # noqa: E402
from data_build.polygons import rasterise  # noqa: E402
from data_build.schema import LABEL_NAMES  # noqa: E402
from data_build.windows import WINDOW_NAMES  # noqa: E402

BATCH = 16


# --- the peer's layout -------------------------------------------------------------------------


def peer_build(root: Path, out_file: Path) -> int:
    """One slice at a time: decode 4 JPEGs to float32, serialise image and mask tensors."""
    import tensorflow as tf

    found = drop_mod.discover(root, read_dicom_headers=False)
    n = 0
    with tf.io.TFRecordWriter(str(out_file)) as writer:
        for case in found.cases:
            chans = [
                cv2.imread(case.render_paths[w], cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
                for w in WINDOW_NAMES
            ]
            image = np.stack(chans, axis=-1)
            h, w = image.shape[:2]
            mask = rasterise(case.polygons or (), h, w).astype(np.float32)
            labels = list(case.labels or (0,) * len(LABEL_NAMES))
            feature = {
                "image": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(image).numpy()])
                ),
                "mask": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[tf.io.serialize_tensor(mask).numpy()])
                ),
                "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=labels)),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
            n += 1
    return n


def peer_dataset(out_file: Path, size: int):
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.FixedLenFeature([len(LABEL_NAMES)], tf.int64),
    }

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        image = tf.reshape(tf.io.parse_tensor(ex["image"], tf.float32), [512, 512, 4])
        mask = tf.reshape(tf.io.parse_tensor(ex["mask"], tf.float32), [512, 512, 1])
        if size != 512:
            image = tf.image.resize(image, [size, size])
            mask = tf.image.resize(mask, [size, size], method="nearest")
        return image, mask, ex["labels"]

    return (
        tf.data.TFRecordDataset(str(out_file))
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )


# --- ours --------------------------------------------------------------------------------------


def our_build(root: Path, out: Path, workers: int) -> int:
    from data_build.records import build

    report = build(
        root, out, workers=workers, overwrite=True, fractions=(1.0, 0.0, 0.0), progress=False
    )
    return int(report.written)


def our_dataset(out: Path, size: int):
    from fusion.data import make_dataset

    return make_dataset(out, "train", image_size=size, batch_size=BATCH)


def our_reference_dataset(out: Path, size: int):
    """Our shards through the per-example float path (`fusion.data.preprocess`): the reader
    before the uint8 fast path, kept as its reference."""
    import tensorflow as tf

    from fusion import data

    files = data.shard_files(out, "train", Manifest.load(out))
    return (
        tf.data.TFRecordDataset(files)
        .map(lambda s: data.preprocess(data.decode(s), size), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )


def decode_floor_dataset(out: Path, size: int):
    """The least any reader of our shards does: parse, decode the four JPEG windows to uint8
    at the DCT scale that gives ``size`` (512 renders: size 512 or 256), batch. No colour map,
    mask, targets or float conversion."""
    import tensorflow as tf

    from data_build import schema
    from fusion import data

    files = data.shard_files(out, "train", Manifest.load(out))
    ratio = 512 // size
    spec = schema.feature_spec()

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        return tf.concat([
            tf.image.decode_jpeg(ex[schema.image_key(n)], channels=1, ratio=ratio, dct_method="INTEGER_FAST")
            for n in WINDOW_NAMES
        ], axis=-1)

    return (
        tf.data.TFRecordDataset(files)
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
        .prefetch(tf.data.AUTOTUNE)
    )


def decode_floor_numpy(out: Path, size: int):
    """The same floor without TensorFlow, as `fusion.reader` reads: records by
    `data_build.tfrecord`, parse by `data_build.examples`, the four JPEG windows decoded by
    OpenCV at the DCT scale (libjpeg's accurate IDCT, where TensorFlow's floor asks for the fast
    one at scale 1), stacked uint8, batched. Yields [B, S', S', 4] uint8 (S' = 512 / ratio)."""
    from data_build import examples, schema, tfrecord
    from fusion import data, reader

    ratio = 512 // size
    batch = []
    for path in data.shard_files(out, "train", Manifest.load(out)):
        for raw in tfrecord.read_records(path):
            record = examples.parse_example(raw)
            batch.append(np.stack([
                cv2.imdecode(np.frombuffer(record[schema.image_key(n)], np.uint8), reader._IMREAD[ratio])
                for n in WINDOW_NAMES
            ], axis=-1))
            if len(batch) == BATCH:
                yield np.stack(batch)
                batch = []
    if batch:
        yield np.stack(batch)


def count_batches(dataset) -> int:
    n = 0
    for batch in dataset:
        first = batch[0] if isinstance(batch, tuple) else batch["image"] if isinstance(batch, dict) else batch
        n += int(first.shape[0])
    return n


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> bool:
    """Empty the OS page cache (root only), so a read comes from disk as at full scale."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
        return True
    except OSError:
        return False


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.tfrecord"))


# --- peak memory of a whole build (main process + workers) -------------------------------------


def peak_build_memory(root: Path, out: Path, workers: int) -> tuple[float, float]:
    """Run `fusion-build` in a subprocess; return (peak RSS of its process tree in MiB, seconds)."""
    cmd = [
        str(Path(sys.executable).parent / "fusion-build"), str(root), "--out", str(out),
        "--workers", str(workers), "--overwrite",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, err = wait_with_peak_rss(proc)
    if proc.returncode != 0:
        raise SystemExit(f"fusion-build failed: {err.decode()[-2000:]}")
    return peak / 2**20, time.perf_counter() - start


def timed(fn, *args) -> tuple[float, int, float]:
    """(wall seconds, slices, CPU seconds of this process, all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    n = fn(*args)
    return time.perf_counter() - start, n, time.process_time() - cpu


def read_passes(make, passes: int) -> int:
    """Slices read in ``passes`` passes, each through a new pipeline from ``make()``."""
    return sum(count_batches(make()) for _ in range(passes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-slices", default="1000,10000")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--read-passes", type=int, default=1, help="passes over the set per read timing")
    parser.add_argument("--reads-only", action="store_true",
                        help="time reads of the shards already in --workdir (no builds, no memory runs)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fusion-bench-"))
    root = work / "drop"
    if not (root / "hemorrhage-labels.csv").exists():
        make_drop(root, args.slices)
    ours, peer = work / "ours", work / "peer"
    peer.mkdir(parents=True, exist_ok=True)
    peer_file = peer / "peer.tfrecord"
    cores = os.cpu_count() or 1

    rates: dict[str, list[float]] = {}
    cpu_ms: dict[str, list[float]] = {}
    can_drop = drop_page_cache() and not args.reads_only
    if args.reads_only and not (peer_file.exists() and (ours / "manifest.json").exists()):
        sys.exit(f"--reads-only needs {peer_file} and {ours}/manifest.json from an earlier run")
    passes = max(1, args.read_passes)

    def add(key: str, seconds: float, n: int, cpu: float = float("nan")) -> None:
        rates.setdefault(key, []).append(n / seconds)
        cpu_ms.setdefault(key, []).append(1000.0 * cpu / n)

    readers = (("peer", peer_dataset, peer_file), ("ours", our_dataset, ours),
               ("ours, per-example float path", our_reference_dataset, ours),
               ("decode floor", decode_floor_dataset, ours))
    for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
        if not args.reads_only:
            add("peer build", *timed(peer_build, root, peer_file))
            add("ours build, 1 worker", *timed(our_build, root, ours, 1))
            if cores > 1:
                add(f"ours build, {cores} workers", *timed(our_build, root, ours, cores))
        for size in (512, 256):
            for name, make, path in readers:
                add(f"{name} read {size}",
                    *timed(read_passes, lambda make=make, path=path, size=size: make(path, size), passes))
        if can_drop:
            for name, make in (("peer", lambda: peer_dataset(peer_file, 512)),
                               ("ours", lambda: our_dataset(ours, 512))):
                drop_page_cache()
                add(f"{name} read 512 cold", *timed(count_batches, make()))

    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    if args.reads_only:
        print(f"\nreads only: {args.slices} slices x {passes} passes, repeats: {args.repeats}, cores: {cores}\n")
        print("| read into batches of 16 | peer slices/s | ours slices/s | ours / peer | "
              "peer CPU ms/slice | ours CPU ms/slice | per-example float path: slices/s, CPU ms/slice "
              "| decode floor: slices/s, CPU ms/slice |")
        print("|---|---|---|---|---|---|---|---|")
        for size in (512, 256):
            p, o, r, f = (f"{n} read {size}" for n in
                          ("peer", "ours", "ours, per-example float path", "decode floor"))
            print(f"| {size} px, warm page cache | {med[p]:.1f} | {med[o]:.1f} | {med[o] / med[p]:.2f}x | "
                  f"{med_cpu[p]:.2f} | {med_cpu[o]:.2f} | {med[r]:.1f}, {med_cpu[r]:.2f} | "
                  f"{med[f]:.1f}, {med_cpu[f]:.2f} |")
        for key in sorted(rates):
            print(f"{key}: slices/s {[round(x) for x in rates[key]]}, CPU ms/slice "
                  f"{[round(x, 2) for x in cpu_ms[key]]}")
        return
    n_ours = our_build(root, ours, cores)
    bytes_ours = folder_bytes(ours) / n_ours
    bytes_peer = peer_file.stat().st_size / args.slices

    print(f"\nslices: {args.slices}, repeats: {args.repeats}, cores: {cores}\n")
    print("| measure | peer | ours | ours / peer |")
    print("|---|---|---|---|")
    print(f"| bytes per slice | {bytes_peer:,.0f} | {bytes_ours:,.0f} | 1/{bytes_peer / bytes_ours:.0f} |")
    peer_build_rate = med["peer build"]
    for key in sorted(k for k in med if k.startswith("ours build")):
        label = key.replace("ours build, ", "")
        print(f"| build slices/s ({label}) | {peer_build_rate:.1f} (1 process) | {med[key]:.1f} | "
              f"{med[key] / peer_build_rate:.1f}x |")
    for size in (512, 256):
        p, o = med[f"peer read {size}"], med[f"ours read {size}"]
        print(f"| read slices/s into batches at {size}, warm page cache | {p:.1f} | {o:.1f} | {o / p:.1f}x |")
    if "peer read 512 cold" in med:
        p, o = med["peer read 512 cold"], med["ours read 512 cold"]
        print(f"| read slices/s into batches at 512, cold page cache | {p:.1f} | {o:.1f} | {o / p:.1f}x |")
    if cores > 1:
        scale = med[f"ours build, {cores} workers"] / med["ours build, 1 worker"]
        print(f"\nbuild scaling 1 -> {cores} workers: {scale:.2f}x")

    sizes = [int(s) for s in args.memory_slices.split(",") if s]
    if sizes:
        print("\n| build of N slices (fusion-build, end to end) | workers "
              "| peak RSS, whole process tree (MiB) | seconds | slices/s |")
        print("|---|---|---|---|---|")
        for n in sizes:
            mroot = work / f"drop-{n}"
            if not (mroot / "hemorrhage-labels.csv").exists():
                make_drop(mroot, n)
            for workers in sorted({1, cores}):
                peak, secs = peak_build_memory(mroot, work / f"ours-{n}", workers)
                print(f"| {n:,} | {workers} | {peak:,.0f} | {secs:.0f} | {n / secs:.0f} |")


if __name__ == "__main__":
    main()
