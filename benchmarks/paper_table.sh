#!/usr/bin/env bash
# The issue-4 benchmark on the embedded model: every method on CounterFact and Sports Facts.
# Resumable: rerun the script and each run continues from its results.jsonl (`--resume`).
# About 800 edits, ~35-60 s each on 2 CPU cores. Two streams (CounterFact, Sports Facts) run side
# by side with one thread each (logs in OUT_DIR/*.log); PARALLEL=0 runs them one after the other.
# Usage: [PARALLEL=0] bash benchmarks/paper_table.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs}
cf=(--data "$data/counterfact/counterfact-rome-train.json" --format counterfact-rome)
sports=(--data "$data/sports/sports.csv" --format sports)
mkdir -p "$out"

counterfact() {
  circuitedit bench "${cf[@]}" --n 100 --methods unlearn-then-learn,ft-full --out "$out/bench-cf100" --resume
  circuitedit bench "${cf[@]}" --n 50 --methods learn-only,ia3-all-layers,ft-localized,lora-localized \
    --out "$out/bench-cf50" --resume
  circuitedit bench "${cf[@]}" --n 50 --methods unlearn-then-learn --localizer random \
    --out "$out/bench-cf50-random" --resume
}

sports_facts() {
  circuitedit bench "${sports[@]}" --n 50 \
    --methods unlearn-then-learn,learn-only,ia3-all-layers,ft-full,ft-localized,lora-localized \
    --out "$out/bench-sports" --resume
  circuitedit bench "${sports[@]}" --n 50 --methods unlearn-then-learn --localizer random \
    --out "$out/bench-sports-random" --resume
}

if [ "${PARALLEL:-1}" = 0 ]; then
  counterfact
  sports_facts
else
  OMP_NUM_THREADS=1 counterfact > "$out/counterfact.log" 2>&1 &
  cf_pid=$!
  OMP_NUM_THREADS=1 sports_facts > "$out/sports.log" 2>&1 &
  sports_pid=$!
  status=0
  wait "$cf_pid" || status=1
  wait "$sports_pid" || status=1
  [ "$status" = 0 ] || { echo "a benchmark stream failed; see $out/counterfact.log and $out/sports.log" >&2; exit 1; }
fi
