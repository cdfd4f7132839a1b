#!/usr/bin/env bash
# The issue-4 benchmark on the embedded model: every method on CounterFact and Sports Facts.
# Resumable: rerun the script and each run continues from its results.jsonl (`--resume`).
# About 800 edits, ~35-60 s each on 2 CPU cores. Each run spreads its facts over WORKERS Ray
# workers (default 2: on 2 cores, one thread each; docs/distributed.md), a fact's methods on one
# worker; needs `pip install -e ".[distributed]"`. WORKERS=1 runs each bench in-process, one after
# the other. ADDRESS=auto runs them on the Ray cluster `ray start --head` started (WORKERS=N: one
# per GPU there, or a share of its cores each).
# Usage: [WORKERS=N] [ADDRESS=auto] bash benchmarks/paper_table.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs}
cf=(--data "$data/counterfact/counterfact-rome-train.json" --format counterfact-rome)
sports=(--data "$data/sports/sports.csv" --format sports)
workers=(--workers "${WORKERS:-2}")
if [ -n "${ADDRESS:-}" ]; then workers+=(--address "$ADDRESS"); fi
mkdir -p "$out"

bench() { circuitedit bench "$@" "${workers[@]}" --resume; }

# CounterFact
bench "${cf[@]}" --n 100 --methods unlearn-then-learn,ft-full --out "$out/bench-cf100"
bench "${cf[@]}" --n 50 --methods learn-only,ia3-all-layers,ft-localized,lora-localized --out "$out/bench-cf50"
bench "${cf[@]}" --n 50 --methods unlearn-then-learn --localizer random --out "$out/bench-cf50-random"
# Sports Facts
bench "${sports[@]}" --n 50 --methods unlearn-then-learn,learn-only,ia3-all-layers,ft-full,ft-localized,lora-localized \
  --out "$out/bench-sports"
bench "${sports[@]}" --n 50 --methods unlearn-then-learn --localizer random --out "$out/bench-sports-random"
