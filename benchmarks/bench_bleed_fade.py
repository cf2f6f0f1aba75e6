"""CPU cost of bleed fading (`fusion.bleed_fade`) beside the rest of the training augmentation.

    python benchmarks/bench_bleed_fade.py SHARDS [--size 256] [--repeats 15]

SHARDS: a shard folder whose train split holds slices with traced masks (e.g. the low-data
proxy's ``folds/fold0/train-shards``, or ``fusion-synth`` + ``fusion-build``). On one batch of 16
masked slices, interleaved in one run: `fusion.augment_numpy.augment_batch` with the default
preset's augmentation without fading, the same with a share 0.3 of the slices faded and with
every one faded, and `fusion.bleed_fade.fade_bleeds` alone. Prints the median CPU ms per slice
(process time, so other load on the machine matters less) and the ratio to the augmentation
without fading.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from fusion import reader
    from fusion.augment_numpy import augment_batch
    from fusion.bleed_fade import fade_bleeds
    from fusion.config import preset

    records = reader.SplitRecords(args.shards, "train")
    masked = [i for i in range(len(records)) if reader.parse_example(records.record(i))["area_pixels"] > 0]
    if len(masked) < BATCH:
        raise SystemExit(f"{args.shards} has {len(masked)} masked train slices; the benchmark needs {BATCH}")
    batch = records.read_batch(masked[:BATCH], args.size)
    base = dataclasses.replace(preset("fusion").augment, bleed_fade_prob=0.0)

    def augment(share: float):
        cfg = dataclasses.replace(base, bleed_fade_prob=share)
        return lambda: augment_batch(batch, cfg, np.random.default_rng(0), records.presets, (0, 0))

    cases = {
        "augmentation, no fading": augment(0.0),
        "+ bleed fading, share 0.3": augment(0.3),
        "+ bleed fading, every slice": augment(1.0),
        "bleed fading alone, every slice": lambda: fade_bleeds(batch, 1.0, 0.2, np.random.default_rng(0),
                                                               records.presets),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: each round times every case once
        for name, fn in cases.items():
            start = time.process_time()
            fn()
            times[name].append(1000.0 * (time.process_time() - start) / BATCH)
    first = statistics.median(times["augmentation, no fading"])
    print(f"{args.size} px, batch of {BATCH} masked slices, median of {args.repeats} (CPU ms per slice)")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:34s} {med:7.2f} ms  {med / first:5.2f}x")


if __name__ == "__main__":
    main()
