"""The demo model across seeds: the held-out test split and an independent synthetic drop.

    python benchmarks/demo_seeds.py --out /tmp/demo-seeds [--seeds 0 1 2] [--skip-existing]

Runs exactly what `make demo` runs (the same drop, split fractions, preset and commands), once
per training seed, and evaluates each run twice:

- on the demo drop's held-out **test** split (15 patients, ~90 slices, with the demo's 80
  patients; with 60 it held 10, and one patient more or less of a rare type combination moved
  a per-type AUC by tenths);
- on an **independent** synthetic drop written with another seed (60 new patients, every
  slice used as test), which nothing in training or threshold calibration has seen.

Thresholds are calibrated on the demo drop's validation split. The fraction of empty predicted
masks on bleeding slices is printed beside Dice so a collapse to all-background cannot hide.
With ``--skip-existing`` finished steps are reused, so a killed run can be continued.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data_build.synth.difficulty import DIFFICULTIES

BIN = Path(sys.executable).parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}


def run(args: list[str], log: Path) -> float:
    """Run one fusion-* command with its output in `log`; seconds taken."""
    start = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run([str(BIN / args[0]), *args[1:]], stdout=handle,
                              stderr=subprocess.STDOUT, env=ENV, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed with exit code {done.returncode}; see {log}")
    return time.perf_counter() - start


def drop(out: Path, seed: int, patients: int, slices: int, fractions: str, skip: bool,
         difficulty: str) -> Path:
    """Write and build a synthetic drop; its shard folder."""
    shards = out / "tfrecords"
    if skip and (shards / "manifest.json").exists():
        return shards
    out.mkdir(parents=True, exist_ok=True)
    run(["fusion-synth", str(out / "drop"), "--patients", str(patients), "--slices-per-patient",
         str(slices), "--seed", str(seed), "--difficulty", difficulty, "--overwrite", "--no-progress"],
        out / "synth.log")
    run(["fusion-build", str(out / "drop"), "--out", str(shards), "--split-fractions", fractions,
         "--overwrite", "--no-progress"], out / "build.log")
    return shards


def summary(metrics_path: Path) -> dict:
    """The figures of one fusion-evaluate metrics.json that the table shows."""
    m = json.loads(metrics_path.read_text())
    c, s = m["classification"], m["segmentation"]
    ctx = c.get("by_context", {})
    per = c["per_class"]
    return {
        "n": m["n_slices"],
        "macro5": c["macro_types"]["auc"],
        "macro6": c["macro"]["auc"],
        "min_type": min((per[t]["auc"], t) for t in ctx if per[t]["auc"] is not None),
        "alone": {t: b["alone"] for t, b in ctx.items()},
        "beside": {t: b["with_other"] for t, b in ctx.items()},
        "dice": s["dice"]["mean"],
        "dice_bleeding": s["dice_nonempty"]["mean"],
        "n_bleeding": s["n_true_nonempty"],
        "empty": s["empty_prediction_rate"],
    }


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds (the drop is always the demo's, seed 0)")
    parser.add_argument("--patients", type=int, default=80, help="the demo drop's (make demo)")
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--difficulty", choices=DIFFICULTIES, default="real",
                        help="fusion-synth --difficulty (the demo: real; the issue-3 table: easy)")
    parser.add_argument("--fractions", default="0.7,0.15,0.15", help="the demo's split")
    parser.add_argument("--independent-seed", type=int, default=1,
                        help="seed of the independent drop (must differ from 0)")
    parser.add_argument("--independent-patients", type=int, default=60,
                        help="patients of the independent drop (kept apart from --patients so "
                             "runs on demo drops of other sizes are scored on the same drop)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="reuse drops, runs and reports already in --out")
    args = parser.parse_args()
    if args.independent_seed == 0:
        parser.error("--independent-seed must differ from the demo drop's seed 0")
    skip = args.skip_existing
    demo = drop(args.out / "demo", 0, args.patients, args.slices, args.fractions, skip,
                args.difficulty)
    other = drop(args.out / "independent", args.independent_seed, args.independent_patients,
                 args.slices, "0,0,1", skip, args.difficulty)
    rows = []
    for seed in args.seeds:
        run_dir = args.out / f"run{seed}"
        if not (skip and (run_dir / "metrics.json").exists()):
            seconds = run(["fusion-train", str(demo), "--out", str(run_dir), "--preset", "demo",
                           "--seed", str(seed), "--overwrite", "--quiet"],
                          args.out / f"train{seed}.log")
            print(f"seed {seed}: trained in {seconds:.0f} s", flush=True)
        for name, shards in (("test split", demo), ("independent drop", other)):
            report = args.out / f"report{seed}-{name.split()[0]}"
            if not (skip and (report / "metrics.json").exists()):
                log = args.out / f"evaluate{seed}-{name.split()[0]}.log"
                run(["fusion-evaluate", str(run_dir), str(shards), "--split", "test", "--out",
                     str(report), "--overwrite"], log)
            rows.append((seed, name, summary(report / "metrics.json")))
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))

    print("\n| seed | evaluated on | slices | macro AUC, 5 types / 6 labels | lowest type AUC "
          "| subarachnoid AUC alone / beside another type | epidural AUC alone / beside "
          "| Dice (all known masks / bleeding slices) | empty masks on bleeding slices |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed, name, r in rows:
        low, low_type = r["min_type"]
        sah_a, sah_b = r["alone"]["subarachnoid"], r["beside"]["subarachnoid"]
        edh_a, edh_b = r["alone"]["epidural"], r["beside"]["epidural"]
        sah = f"{fmt(sah_a['auc'])} (n={sah_a['n_pos']}) / {fmt(sah_b['auc'])} (n={sah_b['n_pos']})"
        edh = f"{fmt(edh_a['auc'])} (n={edh_a['n_pos']}) / {fmt(edh_b['auc'])} (n={edh_b['n_pos']})"
        print(f"| {seed} | {name} | {r['n']} | {fmt(r['macro5'])} / {fmt(r['macro6'])} "
              f"| {fmt(low)} {low_type} "
              f"| {sah} | {edh} "
              f"| {fmt(r['dice'])} / {fmt(r['dice_bleeding'])} "
              f"| {round(r['empty'] * r['n_bleeding'])} of {r['n_bleeding']} |")


if __name__ == "__main__":
    main()
