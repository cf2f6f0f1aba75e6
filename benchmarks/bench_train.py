"""Training throughput, input-pipeline headroom and SavedModel latency on this machine.

    python benchmarks/bench_train.py SHARDS [--preset fusion] [--image-size 256] [--batch-size 8]

SHARDS is a `fusion-build` output (e.g. the demo's `demo/tfrecords`). Measures, with medians of
`--repeats` interleaved runs:

- training slices/s: `model.fit` steps of the full training step (augmentation included);
- input pipeline slices/s: the same training reader (`fusion.reader`, augmented, in its
  threads) iterated without the model, and its ratio
  to what training consumes (goal: >= 3x, so training never waits for data);
- SavedModel latency per slice on `serving_default`, batch 1 and 8, at 256 and 512 px inputs
  (the export resizes to the training size in-graph and returns the mask at the input size).

Prints a Markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from data_build.manifest import Manifest  # noqa: E402
from fusion import config, export, optim, train  # noqa: E402
from fusion.model import build_model  # noqa: E402
from fusion.thresholds import Thresholds  # noqa: E402
from fusion.train_data import make_run_data, reader_workers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards", type=Path)
    parser.add_argument("--preset", default="fusion")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cfg = config.preset(args.preset).replace(
        model={"image_size": args.image_size},
        train={"batch_size": args.batch_size, "steps_per_epoch": args.steps},
    )
    manifest = Manifest.load(args.shards)
    train_seq = make_run_data(args.shards, cfg).train  # what fusion-train reads: fusion.reader
    model = optim.compile_model(
        build_model(cfg.model), train.resolve_loss_config(cfg, manifest), args.steps
    )
    batch = args.batch_size
    model.fit(train_seq, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
    pool = ThreadPoolExecutor(reader_workers())  # the reader's threads, as in fit

    fit_rates, pipe_rates = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.fit(train_seq, epochs=1, steps_per_epoch=args.steps, verbose=0)
        fit_rates.append(args.steps * batch / (time.perf_counter() - start))
        start = time.perf_counter()
        n = args.steps * 3
        for _ in pool.map(train_seq.__getitem__, (i % len(train_seq) for i in range(n))):
            pass
        pipe_rates.append(n * batch / (time.perf_counter() - start))

    fit_rate, pipe_rate = statistics.median(fit_rates), statistics.median(pipe_rates)
    params = model.count_params()
    print(f"\npreset {args.preset}, image {args.image_size}, batch {batch}, {params:,} parameters, "
          f"{os.cpu_count()} cores, TF {tf.__version__}\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| training slices/s at {args.image_size} | {fit_rate:.1f} |")
    print(f"| input pipeline slices/s (augmented, no model) | {pipe_rate:.1f} |")
    print(f"| pipeline headroom (pipeline / training) | {pipe_rate / fit_rate:.1f}x |")

    with tempfile.TemporaryDirectory() as tmp:
        folder = export.write_savedmodel(
            model, Path(tmp) / "export" / "1", args.image_size, Thresholds.from_array([0.5] * 6),
            manifest.presets,
        )
        serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
        for size in (256, 512):
            for n in (1, 8):
                images = tf.random.uniform([n, size, size, 4])
                for _ in range(3):
                    serve(images=images)
                times = []
                for _ in range(max(5, 20 // n)):
                    start = time.perf_counter()
                    serve(images=images)
                    times.append((time.perf_counter() - start) / n)
                print(f"| SavedModel latency per slice, {size} px input, batch {n} | "
                      f"{statistics.median(times) * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
