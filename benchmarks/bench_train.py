"""Training throughput, input-pipeline headroom and SavedModel latency on this machine.

    python benchmarks/bench_train.py SHARDS [--preset fusion] [--image-size 256] [--batch-size 8]

SHARDS is a `fusion-build` output (e.g. the demo's `demo/tfrecords`). Measures, with medians of
`--repeats` interleaved runs:

- training slices/s: `model.fit` steps of the full training step (augmentation included);
- input pipeline slices/s: the same training reader (`fusion.reader`, augmented, in its
  threads) iterated without the model, and its ratio
  to what training consumes (goal: >= 3x, so training never waits for data);
- SavedModel latency per slice on `serving_default`, batch 1 and 8, at 256 and 512 px inputs
  (the export resizes to the training size in-graph and returns the mask at the input size),
  for an export with flip TTA in its graph (the default) and one without, timed alternately
  (``--latency-only`` skips the training figures; the model keeps its random weights).

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
from typing import Any

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
    parser.add_argument("--latency-only", action="store_true", help="only the SavedModel latency")
    args = parser.parse_args()

    cfg = config.preset(args.preset).replace(
        model={"image_size": args.image_size},
        train={"batch_size": args.batch_size, "steps_per_epoch": args.steps},
    )
    manifest = Manifest.load(args.shards)
    model = optim.compile_model(
        build_model(cfg.model), train.resolve_loss_config(cfg, manifest), args.steps
    )
    print(f"\npreset {args.preset}, image {args.image_size}, batch {args.batch_size}, "
          f"{model.count_params():,} parameters, {os.cpu_count()} cores, TF {tf.__version__}\n")
    print("| measure | value |")
    print("|---|---|")
    if not args.latency_only:
        train_seq = make_run_data(args.shards, cfg).train  # what fusion-train reads: fusion.reader
        training_rates(model, train_seq, args.image_size, args.steps, args.batch_size, args.repeats)
    savedmodel_latency(model, args.image_size, manifest.presets)


def training_rates(model: Any, train_seq: Any, size: int, steps: int, batch: int, repeats: int) -> None:
    """Print training and input-pipeline slices/s (medians of `repeats`) and their ratio."""
    model.fit(train_seq, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
    pool = ThreadPoolExecutor(reader_workers())  # the reader's threads, as in fit

    fit_rates, pipe_rates = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(train_seq, epochs=1, steps_per_epoch=steps, verbose=0)
        fit_rates.append(steps * batch / (time.perf_counter() - start))
        start = time.perf_counter()
        n = steps * 3
        for _ in pool.map(train_seq.__getitem__, (i % len(train_seq) for i in range(n))):
            pass
        pipe_rates.append(n * batch / (time.perf_counter() - start))
    fit_rate, pipe_rate = statistics.median(fit_rates), statistics.median(pipe_rates)
    print(f"| training slices/s at {size} | {fit_rate:.1f} |")
    print(f"| input pipeline slices/s (augmented, no model) | {pipe_rate:.1f} |")
    print(f"| pipeline headroom (pipeline / training) | {pipe_rate / fit_rate:.1f}x |")


def savedmodel_latency(model: Any, image_size: int, presets: Any) -> None:
    """Print `serving_default`'s latency per slice (median) for a flip-TTA export and a one-pass
    export of `model`, timed alternately, and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        serve = {}
        for tta in ("none", "flip"):
            folder = export.write_savedmodel(
                model, Path(tmp) / tta / "1", image_size, Thresholds.from_array([0.5] * 6), presets, tta)
            serve[tta] = tf.saved_model.load(str(folder)).signatures["serving_default"]
        for size in (256, 512):
            for n in (1, 8):
                images = tf.random.uniform([n, size, size, 4])
                times: dict[str, list[float]] = {"none": [], "flip": []}
                for fn in serve.values():
                    for _ in range(3):
                        fn(images=images)
                for _ in range(max(5, 20 // n)):
                    for tta, fn in serve.items():
                        start = time.perf_counter()
                        fn(images=images)
                        times[tta].append((time.perf_counter() - start) / n)
                med = {k: statistics.median(v) * 1000 for k, v in times.items()}
                print(f"| SavedModel latency per slice, {size} px input, batch {n}: one pass / flip "
                      f"TTA | {med['none']:.1f} / {med['flip']:.1f} ms ({med['flip'] / med['none']:.2f}x) |")


if __name__ == "__main__":
    main()
