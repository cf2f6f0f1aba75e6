"""Training-step cost of model variants, the input pipeline left out (issue 10's candidates).

    python benchmarks/bench_model_step.py [--sizes 128,256] [--steps 8] [--repeats 3]

For every variant (a preset, optionally with model fields replaced) and size: the model is
built and compiled exactly as `fusion-train` does (`fusion.optim.compile_model`), one batch of
random images and targets (batch size of the preset, a bleed on half the slices) is trained on
`--steps` times after two warm-up steps, and the median milliseconds per step over
`--repeats` rounds is printed, per slice too, with the ratio to the first variant at that size
per slice (variants may differ in batch size: the default's rows train at 4, the others at 8). Rounds
interleave the variants, so load on a shared machine hits them alike.

Variants ("fusion ..." rows are the `fusion-attention` preset, the default until 2026-11-30,
whose figures the docs quote as "the default"): `fusion-attention` (GroupNorm, residual
blocks, attention fusion at full resolution); with
BatchNorm; with early fusion; both; XLA-compiled (``train.jit_compile``); with the attention
fusion at half and quarter resolution (``model.fusion_stride``); the `plain-unet`
baseline, and with GroupNorm; the default's recipe on the plain U-Net's blocks (GroupNorm),
with early fusion or the attention at half resolution; the `demo` preset, with BatchNorm,
with XLA, and with each block and fusion (plain or residual; early, or attention at full or
half resolution). Runs on the current Keras backend (KERAS_BACKEND), no
TensorFlow import of its own.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from fusion.config import RunConfig, preset  # noqa: E402

#: (label, preset, config sections replaced: {"model": {...}, "train": {...}})
VARIANTS: tuple[tuple[str, str, dict[str, dict[str, Any]]], ...] = (
    ("fusion (GN, attention)", "fusion-attention", {}),
    ("fusion + BatchNorm", "fusion-attention", {"model": {"norm": "batch"}}),
    ("fusion + early fusion", "fusion-attention", {"model": {"fusion": "early"}}),
    ("fusion + BN + early", "fusion-attention", {"model": {"norm": "batch", "fusion": "early"}}),
    ("fusion + XLA", "fusion-attention", {"train": {"jit_compile": True}}),
    ("fusion + fusion_stride 2", "fusion-attention", {"model": {"fusion_stride": 2}}),
    ("fusion + fusion_stride 4", "fusion-attention", {"model": {"fusion_stride": 4}}),
    ("plain-unet", "plain-unet", {}),
    ("plain-unet + GroupNorm", "plain-unet", {"model": {"norm": "group"}}),
    ("fusion + plain blocks, early", "fusion-attention", {"model": {"block": "plain", "fusion": "early"}}),
    ("fusion + plain blocks, stride 2", "fusion-attention",
     {"model": {"block": "plain", "fusion": "attention", "fusion_stride": 2}}),
    ("default (fusion preset)", "fusion", {}),
    ("default at batch 8", "fusion", {"train": {"batch_size": 8}}),
    ("default + weight EMA", "fusion", {"train": {"ema_momentum": 0.98}}),
    ("default without deep supervision", "fusion", {"model": {"deep_supervision": 0}}),
    ("default, depth 5", "fusion", {"model": {"depth": 5}}),
    ("default + BatchNorm", "fusion", {"model": {"norm": "batch"}}),
    ("default, plain blocks", "fusion", {"model": {"block": "plain"}}),
    ("demo (width 8)", "demo", {}),
    ("demo + BatchNorm", "demo", {"model": {"norm": "batch"}}),
    ("demo + XLA", "demo", {"train": {"jit_compile": True}}),
    ("demo, plain blocks, early", "demo", {"model": {"block": "plain", "fusion": "early"}}),
    ("demo, residual blocks, early", "demo", {"model": {"block": "residual", "fusion": "early"}}),
    ("demo, residual blocks, attention", "demo",
     {"model": {"block": "residual", "fusion": "attention", "fusion_stride": 1}}),
    ("demo, residual blocks, attention stride 2", "demo",
     {"model": {"block": "residual", "fusion": "attention", "fusion_stride": 2}}),
)


def batch(cfg: RunConfig, size: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One training batch of random images; a square bleed on every other slice."""
    from fusion.targets import pack_targets

    rng = np.random.default_rng(seed)
    b = cfg.train.batch_size
    mask = np.zeros((b, size, size, 1), np.float32)
    mask[::2, size // 4: size // 2, size // 4: size // 2] = 1.0
    reader = {
        "image": rng.random((b, size, size, 4), dtype=np.float32),
        "labels": (rng.random((b, 6)) < 0.3).astype(np.float32), "has_labels": np.ones(b, np.float32),
        "area_fraction": mask.mean(axis=(1, 2, 3)), "has_area": np.ones(b, np.float32),
        "mask": mask, "has_mask": np.ones(b, np.float32),
    }
    return pack_targets(reader, cfg.model.outputs)


def make_step(cfg: RunConfig) -> Any:
    """A compiled model's `train_on_batch` on one fixed batch."""
    from fusion.model import build_model
    from fusion.optim import compile_model

    model = compile_model(build_model(cfg.model), cfg, steps_per_epoch=100)
    x, y = batch(cfg, cfg.model.image_size)
    for _ in range(2):  # trace/compile and first-call allocation
        model.train_on_batch(x, y)
    return lambda: model.train_on_batch(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,256", help="comma-separated image sizes")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--only", default="", help="comma-separated variant labels' prefixes to run")
    args = parser.parse_args()
    prefixes = [p for p in args.only.split(",") if p]  # an empty prefix would match every variant
    wanted = [v for v in VARIANTS if not prefixes or any(v[0].startswith(p) for p in prefixes)]
    import keras

    print(f"backend {keras.backend.backend()}, {os.cpu_count()} cores, {args.steps} steps x {args.repeats} rounds")
    print("| size | variant | batch | ms / step | ms / slice | vs first, per slice |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        cfgs = [(label, preset(name).replace(**{**over, "model": {**over.get("model", {}), "image_size": size}}))
                for label, name, over in wanted]
        steps = [make_step(cfg) for _, cfg in cfgs]
        times: list[list[float]] = [[] for _ in cfgs]
        for _ in range(args.repeats):
            for i, step in enumerate(steps):
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[i].append((time.perf_counter() - start) / args.steps * 1e3)
        first = statistics.median(times[0]) / cfgs[0][1].train.batch_size
        for (label, cfg), t in zip(cfgs, times):
            ms = statistics.median(t)
            per_slice = ms / cfg.train.batch_size
            print(f"| {size} | {label} | {cfg.train.batch_size} | {ms:.0f} | {per_slice:.1f} "
                  f"| {per_slice / first:.2f}x |")


if __name__ == "__main__":
    main()
