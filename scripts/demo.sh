#!/usr/bin/env bash
# The main job end to end on the embedded synthetic default:
# synthetic drop -> shards -> verify -> train -> export -> held-out evaluation -> predictions.
# Usage: scripts/demo.sh [BIN_DIR]   (BIN_DIR holds the fusion-* commands; `make demo` passes .venv/bin)
set -euo pipefail
BIN="${1:-}"
[ -n "$BIN" ] && BIN="${BIN%/}/"
OUT="${DEMO_OUT:-demo}"
PATIENTS="${DEMO_PATIENTS:-40}"
SLICES="${DEMO_SLICES:-8}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

step() { printf '\n==> %s\n' "$*"; }

step "1/6 synthetic drop ($PATIENTS patients x $SLICES slices, real layout) -> $OUT/drop"
"${BIN}fusion-synth" "$OUT/drop" --patients "$PATIENTS" --slices-per-patient "$SLICES" --seed 0 --overwrite

step "2/6 build shards -> $OUT/tfrecords"
"${BIN}fusion-build" "$OUT/drop" --out "$OUT/tfrecords" --overwrite

step "3/6 verify shards against the manifest"
"${BIN}fusion-verify" "$OUT/tfrecords"

step "4/6 train the demo model (a few minutes on 2 CPU cores) and export a SavedModel -> $OUT/run"
"${BIN}fusion-train" "$OUT/tfrecords" --out "$OUT/run" --preset demo --seed 0 --overwrite

step "5/6 evaluate on the held-out test split -> $OUT/report"
"${BIN}fusion-evaluate" "$OUT/run" "$OUT/tfrecords" --split test --out "$OUT/report" --overwrite

step "6/6 predict on the raw DICOM series -> $OUT/predictions"
"${BIN}fusion-predict" "$OUT/run" "$OUT/drop/dcms" --out "$OUT/predictions" --overwrite

printf '\nDone. Held-out report: %s/report/report.html  metrics: %s/report/metrics.json\n' "$OUT" "$OUT"
printf 'Per-series volumes: %s/predictions/series.csv\n' "$OUT"
