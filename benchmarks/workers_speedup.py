"""The speed-up of `bench --workers 2` over `--workers 1`: the same facts and methods, one run each.

    python benchmarks/workers_speedup.py [--data FILE] [--format F] [--n 8] [--methods A,B]
        [--workers 1 2] [--out DIR] [-- EXTRA BENCH FLAGS]

Runs `circuitedit bench` once per --workers value (default 1, then 2) on the same first N facts
of the data set (default: the paper table's CounterFact file), each into its own fresh output
directory (a temporary one unless --out), and prints a markdown table: wall seconds of the whole
command, seconds of the run (`summary.json`'s: fact selection, baselines, edits), edits finished
and error rows, and each row's speed-up over the first. The edits dominate with more than a few
facts; with N facts and W workers the last facts leave workers idle, so N a multiple of W (and
several facts per worker) measures the steady state. Flags after `--` go to every bench run,
e.g. a tiny model: `-- --model DIR --keep-unknown --dtype fp32 --config tiny.json`.

Issue 55's goal: >= 1.7x for --workers 2 on 2 cores. Compare ratios from one run, never seconds
across runs (a shared machine's load moves them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COUNTERFACT = "../shared/data/counterfact/counterfact-rome-train.json"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=COUNTERFACT)
    parser.add_argument("--format", default="counterfact-rome")
    parser.add_argument("--n", type=int, default=8, help="facts (default 8)")
    parser.add_argument("--methods", default="unlearn-then-learn,ft-full")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    return parser.parse_args(argv), extra


def bench(args: argparse.Namespace, extra: list[str], workers: int, out: Path) -> dict:
    """One bench run: its wall seconds, run seconds, finished edits and error rows."""
    command = [sys.executable, "-m", "circuitedit.cli", "bench", "--data", args.data, "--format", args.format,
               "--n", str(args.n), "--methods", args.methods, "--out", str(out), "--workers", str(workers),
               "--json", *extra]
    print(f"$ {' '.join(command[2:])}", file=sys.stderr)
    tick = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - tick
    if done.returncode:
        raise SystemExit(f"bench --workers {workers} failed (exit {done.returncode})")
    summary = json.loads(done.stdout)
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {"workers": workers, "wall_s": wall, "run_s": summary["seconds"], "edits": len(records),
            "errors": sum(bool(r.get("error")) for r in records)}


def table(rows: list[dict]) -> str:
    first = rows[0]
    lines = ["| workers | wall s | run s | edits | errors | speed-up (wall) | speed-up (run) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['workers']} | {row['wall_s']:.1f} | {row['run_s']:.1f} | {row['edits']} | "
                     f"{row['errors']} | {first['wall_s'] / row['wall_s']:.2f}x | {first['run_s'] / row['run_s']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="workers-speedup-") as tmp:
        root = args.out or Path(tmp)
        rows = [bench(args, extra, workers, root / f"workers-{workers}") for workers in args.workers]
    print(f"{args.n} facts of {args.data}, methods {args.methods}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
