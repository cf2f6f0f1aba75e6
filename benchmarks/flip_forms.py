"""Two forms of flip test-time augmentation inside a graph, timed side by side on this machine.

    python benchmarks/flip_forms.py [--preset fusion] [--image-size 256]

- one: a single model call (no TTA), the reference;
- two: the model called on the batch and on its left-right mirror, masks averaged (what
  `fusion.export.make_serving_fns` does with ``tta="flip"``);
- stacked: one model call on the batch and its mirror concatenated (a batch of 2B).

Each is a `tf.function` over the same model (random weights), called alternately; medians of
7-40 calls per slice at batch 1 and 8. docs/benchmarks.md ("Flip TTA inside the SavedModel")
quotes the ratios to "one".
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from fusion import config  # noqa: E402
from fusion.model import build_model  # noqa: E402


def forms(model: tf.keras.Model, size: int) -> dict[str, tf.types.experimental.GenericFunction]:
    """The three forms as traced functions on [B, size, size, 4]."""
    spec = [tf.TensorSpec([None, size, size, 4], tf.float32)]

    @tf.function(input_signature=spec)
    def one(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)["mask"]

    @tf.function(input_signature=spec)
    def two(x: tf.Tensor) -> tf.Tensor:
        a = model(x, training=False)["mask"]
        b = model(tf.reverse(x, [2]), training=False)["mask"]
        return (a + tf.reverse(b, [2])) / 2

    @tf.function(input_signature=spec)
    def stacked(x: tf.Tensor) -> tf.Tensor:
        n = tf.shape(x)[0]
        m = model(tf.concat([x, tf.reverse(x, [2])], 0), training=False)["mask"]
        return (m[:n] + tf.reverse(m[n:], [2])) / 2

    return {"one": one, "two": two, "stacked": stacked}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="fusion")
    p.add_argument("--image-size", type=int, default=256)
    args = p.parse_args()
    cfg = config.preset(args.preset).replace(model={"image_size": args.image_size})
    fns = forms(build_model(cfg.model), args.image_size)
    print("| batch | one, ms/slice | two calls | stacked 2B | two / one | stacked / one |")
    print("|---|---|---|---|---|---|")
    for n in (1, 8):
        x = tf.random.uniform([n, args.image_size, args.image_size, 4])
        for f in fns.values():
            for _ in range(3):
                f(x)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(max(7, 40 // n)):
            for k, f in fns.items():
                start = time.perf_counter()
                f(x).numpy()
                times[k].append((time.perf_counter() - start) / n * 1000)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {n} | {med['one']:.1f} | {med['two']:.1f} | {med['stacked']:.1f} | "
              f"{med['two'] / med['one']:.2f}x | {med['stacked'] / med['one']:.2f}x |")


if __name__ == "__main__":
    main()
