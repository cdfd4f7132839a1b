#!/usr/bin/env bash
# The issue-4 benchmark on the embedded model: every method on CounterFact and Sports Facts.
# Resumable: rerun the script and each run continues from its results.jsonl (`--resume`).
# About 800 edits; ~35 s each on 2 CPU cores. Usage: bash benchmarks/paper_table.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs}
cf=(--data "$data/counterfact/counterfact-rome-train.json" --format counterfact-rome)
sports=(--data "$data/sports/sports.csv" --format sports)

circuitedit bench "${cf[@]}" --n 100 --methods unlearn-then-learn,ft-full --out "$out/bench-cf100" --resume
circuitedit bench "${cf[@]}" --n 50 --methods learn-only,ia3-all-layers,ft-localized,lora-localized \
  --out "$out/bench-cf50" --resume
circuitedit bench "${cf[@]}" --n 50 --methods unlearn-then-learn --localizer random --out "$out/bench-cf50-random" --resume
circuitedit bench "${sports[@]}" --n 50 \
  --methods unlearn-then-learn,learn-only,ia3-all-layers,ft-full,ft-localized,lora-localized \
  --out "$out/bench-sports" --resume
circuitedit bench "${sports[@]}" --n 50 --methods unlearn-then-learn --localizer random \
  --out "$out/bench-sports-random" --resume
