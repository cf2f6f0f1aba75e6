"""GroupNorm's cost: `fusion.layers.GroupNorm` against Keras' GroupNormalization, side by side.

    python benchmarks/bench_group_norm.py [--repeats 5] [--steps 3]

1. The layer alone, forward and backward (TensorFlow, `tf.function`), at the feature shapes
   of the default model at 256 px, batch 8; BatchNormalization as a reference.
2. The default preset's whole training step at 256 px and batch 8 (the default's own batch is 4
   since 2026-12-02: batch 8 keeps the step's slices equal to `plain-unet`'s, so the ratio is
   per slice; `bench_model_step.make_step`) with our
   GroupNorm and with Keras' computation swapped back in, and `plain-unet`'s step: the ratio
   issue 10's time goal is about (<= 1.5x the plain U-Net's training time).

Rounds interleave the variants; medians. TensorFlow backend (the layer benchmark uses
`tf.GradientTape`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bench_model_step import make_step  # noqa: E402

from fusion import layers  # noqa: E402
from fusion.config import preset  # noqa: E402

SHAPES = ((8, 256, 256, 16), (8, 128, 128, 32), (8, 64, 64, 64), (8, 32, 32, 128))


def layer_step(layer: keras.layers.Layer, shape: tuple[int, ...]) -> Callable[[], Any]:
    x = tf.constant(np.random.default_rng(0).normal(1.0, 2.0, shape).astype("float32"))
    layer.build(shape)

    @tf.function
    def step() -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return tape.gradient(loss, [x, *layer.trainable_weights])

    step()
    return step


def median_ms(steps: dict[str, Callable[[], Any]], repeats: int, calls: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            times[label].append((time.perf_counter() - start) / calls * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def keras_group_norm_step(cfg: Any) -> Callable[[], Any]:
    """The model's step built with Keras' own GroupNormalization computation."""
    fast = layers.GroupNorm.call
    layers.GroupNorm.call = keras.layers.GroupNormalization.call  # type: ignore[method-assign]
    try:
        return make_step(cfg)
    finally:
        layers.GroupNorm.call = fast  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=3, help="model steps per round")
    parser.add_argument("--layers-only", action="store_true", help="skip the whole-model steps")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; the layer forward + backward, ms (median of {args.repeats})")
    print("| features | Keras GroupNormalization | fusion GroupNorm | ratio | BatchNormalization |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        ms = median_ms({"keras": layer_step(keras.layers.GroupNormalization(8), shape),
                        "ours": layer_step(layers.GroupNorm(8), shape),
                        "bn": layer_step(keras.layers.BatchNormalization(), shape)}, args.repeats, 5)
        print(f"| {'x'.join(map(str, shape))} | {ms['keras']:.1f} | {ms['ours']:.1f} | "
              f"{ms['ours'] / ms['keras']:.2f}x | {ms['bn']:.1f} |")
    if args.layers_only:
        return
    # Batch 8 for both (the default trains at 4 since 2026-12-02): the same slices per step,
    # so the ratio is per slice, and the layer shapes above stay the step's.
    default = preset("fusion").replace(model={"image_size": 256}, train={"batch_size": 8})
    steps = {"default, Keras GroupNormalization": keras_group_norm_step(default),
             "default, fusion GroupNorm": make_step(default),
             "plain-unet": make_step(preset("plain-unet").replace(model={"image_size": 256}))}
    ms = median_ms(steps, args.repeats, args.steps)
    print(f"\nwhole training step at 256 px, batch 8, ms (median of {args.repeats} rounds of {args.steps})")
    print("| model | ms / step | vs plain-unet |")
    print("|---|---|---|")
    for label, value in ms.items():
        print(f"| {label} | {value:.0f} | {value / ms['plain-unet']:.2f}x |")


if __name__ == "__main__":
    main()
