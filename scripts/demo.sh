#!/usr/bin/env bash
# The main job end to end on the embedded synthetic default:
# synthetic drop -> shards -> verify -> train -> export -> held-out evaluation -> predictions.
# Usage: scripts/demo.sh [BIN_DIR]   (BIN_DIR holds the fusion-* commands; `make demo` passes .venv/bin)
set -euo pipefail
BIN="${1:-}"
[ -n "$BIN" ] && BIN="${BIN%/}/"
OUT="${DEMO_OUT:-demo}"
# 80 patients: with 60 the test split held 10 patients, and one patient of a rare type
# combination moved a per-type AUC by tenths between seeds (docs/benchmarks.md).
PATIENTS="${DEMO_PATIENTS:-80}"
SLICES="${DEMO_SLICES:-6}"
# 15% validation: the thresholds are calibrated there, and 10% of a small drop is ~4 patients.
FRACTIONS="${DEMO_SPLIT_FRACTIONS:-0.7,0.15,0.15}"
# Phantom setting (fusion-synth --difficulty): "real" (the default, as fusion-synth's) is
# calibrated to real head CT (bleeds ~20 HU above brain, small and thin ones, calcifications,
# skull base...); "easy" is the original phantom, whose figures real CT does not reproduce
# (docs/benchmarks.md, "The demo model").
DIFFICULTY="${DEMO_DIFFICULTY:-real}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

step() { printf '\n==> %s\n' "$*"; }

step "1/6 synthetic drop ($PATIENTS patients x $SLICES slices, real layout, phantom setting '$DIFFICULTY') -> $OUT/drop"
"${BIN}fusion-synth" "$OUT/drop" --patients "$PATIENTS" --slices-per-patient "$SLICES" --seed 0 \
    --difficulty "$DIFFICULTY" --overwrite

step "2/6 build shards -> $OUT/tfrecords"
"${BIN}fusion-build" "$OUT/drop" --out "$OUT/tfrecords" --split-fractions "$FRACTIONS" --overwrite

step "3/6 verify shards against the manifest"
"${BIN}fusion-verify" "$OUT/tfrecords"

step "4/6 train the demo model (a few minutes on 2 CPU cores) and export a SavedModel -> $OUT/run"
"${BIN}fusion-train" "$OUT/tfrecords" --out "$OUT/run" --preset demo --seed 0 --overwrite

step "5/6 evaluate on the held-out test split -> $OUT/report"
"${BIN}fusion-evaluate" "$OUT/run" "$OUT/tfrecords" --split test --out "$OUT/report" --overwrite

step "6/6 predict on the raw DICOM series -> $OUT/predictions"
"${BIN}fusion-predict" "$OUT/run" "$OUT/drop/dcms" --out "$OUT/predictions" --overwrite

PY="${BIN}python"; command -v "$PY" >/dev/null || PY=python3
"$PY" - "$OUT/report/metrics.json" "$DIFFICULTY" <<'PY' || true
import json, sys
m = json.load(open(sys.argv[1]))
c, s = m["classification"], m.get("segmentation", {})
print("\nHeld-out test split: %d slices (phantom setting: %s; test-time augmentation: %s)"
      % (m["n_slices"], sys.argv[2], m.get("tta", "none")))
print("  %-18s %6s %6s %6s %6s %6s" % ("type", "AUC", "AUPRC", "sens", "spec", "F1"))
for name, r in c["per_class"].items():
    f = lambda v: "   n/a" if v is None else "%6.3f" % v
    print("  %-18s %s %s %s %s %s" % (name, f(r["auc"]), f(r["auprc"]), f(r["sensitivity"]), f(r["specificity"]), f(r["f1"])))
print("  macro AUC: 5 types %.3f, all 6 labels %.3f | mean Dice %.3f over %d slices with known masks"
      % (c["macro_types"]["auc"], c["macro"]["auc"], s["dice"]["mean"], s["n"]))
ctx = c.get("by_context") or {}
if ctx:
    print("  AUC per type alone on the slice vs. beside another type (n = positives;"
          " negatives = slices without the type):")
    g = lambda v: "  n/a" if v is None else "%.3f" % v
    for name, b in ctx.items():
        a, o = b.get("alone") or {}, b.get("with_other") or {}
        print("  %-18s alone %s (n=%s)  beside another %s (n=%s)  neg %s"
              % (name, g(a.get("auc")), a.get("n_pos"), g(o.get("auc")), o.get("n_pos"),
                 b.get("n_neg")))
PY
printf '\nDone. Held-out report: %s/report/report.html  metrics: %s/report/metrics.json\n' "$OUT" "$OUT"
printf 'Per-series volumes: %s/predictions/series.csv\n' "$OUT"
