"""Our model beside the peer's two designs: same shards, same budget, one run.

    python benchmarks/compare_presets.py SHARDS --out /tmp/compare [--epochs 12] [--steps 27]

Each preset keeps its own design (fusion, heads, losses, which slices it trains on) and gets the
same budget: the same image size and encoder size, the same number of optimizer steps of the
same batch size. Thresholds are calibrated on the validation split; every number printed is on
the held-out **test** split. The fraction of empty predicted masks on bleeding slices is printed
beside Dice so a collapse to all-background cannot hide.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from fusion import config, data, scoring, train  # noqa: E402

PRESETS = ("fusion", "peer-unet", "peer-cls")


def run_preset(name: str, shards: Path, out: Path, args: argparse.Namespace) -> dict:
    demo = config.preset("demo")
    size_fields = {k: getattr(demo.model, k) for k in ("image_size", "width", "depth", "fusion_width", "groups")}
    schedule = {}
    if args.schedule == "demo":  # the demo's tuned optimiser schedule, for every preset alike
        schedule = {k: getattr(demo.train, k) for k in ("learning_rate", "warmup_epochs", "schedule")}
    cfg = config.preset(name).replace(
        model=size_fields,
        train={"epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": demo.train.batch_size,
               "seed": args.seed, "patience": args.epochs, **schedule},
        augment={"rotation_deg": demo.augment.rotation_deg, "scale": demo.augment.scale},
    )
    start = time.perf_counter()
    result = train.train(shards, out / name, cfg, overwrite=True, export=False, verbose=0)
    seconds = time.perf_counter() - start
    model = keras.saving.load_model(out / name / "best.keras", compile=False)
    test = data.make_dataset(shards, "test", image_size=cfg.model.image_size, batch_size=8)
    collected = scoring.collect(scoring.ModelPredictor(model), test)
    metrics, _ = scoring.compute_metrics(collected, result.thresholds, n_boot=0)
    return {"preset": name, "seconds": seconds, "test": metrics["summary"], "n_test": metrics["n_slices"]}


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=27, help="optimizer steps per epoch, all presets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", choices=("preset", "demo"), default="preset",
                        help="each preset's own learning-rate schedule, or the demo's for all")
    args = parser.parse_args()
    rows = [run_preset(name, args.shards, args.out, args) for name in PRESETS]
    (args.out / "compare.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{args.epochs} epochs x {args.steps} steps, {args.schedule} schedule, seed {args.seed}; test split, "
          f"{rows[0]['n_test']} slices\n")
    print("| preset | macro AUC | macro AUPRC | macro F1 | Dice | empty masks on bleeds "
          "| area MAE (fraction) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["test"]
        print(f"| {r['preset']} | {fmt(t.get('macro_auc'))} | {fmt(t.get('macro_auprc'))} | "
              f"{fmt(t.get('macro_f1'))} | {fmt(t.get('dice'))} | {fmt(t.get('empty_prediction_rate'), 2)} | "
              f"{fmt(t.get('area_fraction_mae'), 4)} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
