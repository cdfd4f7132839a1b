"""The development edits that choose the defaults: the built-in demo edits plus CounterFact facts
the model knows, taken from the *end* of the file so they never overlap the benchmark (which
takes facts from the start).

    python benchmarks/dev_edits.py ../shared/data/counterfact/counterfact-rome-train.json \
        [--n-counterfact 6] [--set editor.learn.lr=0.03 ...] [--label NAME] [--out runs/dev.jsonl]
        [--skip-counterfact K] [--no-demo]

Prints one row per edit and the means: held-out paraphrase accuracy, forget rate, F_control,
neighbourhood accuracy, CounterFact neighbourhood specificity (P(true) > P(new)), steps and
seconds per edit. `--set` overrides any EditConfig field by its dotted path; each `--variant`
edits every fact once more with its own overrides, right after the first, so timings compare
within one run. With `--out`, each edit's record is appended (JSONL) and `--table-only` prints
the table of a label from it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import mean

from circuitedit import EditConfig, edit, load_model
from circuitedit.core.tokens import TargetTokenizationError
from circuitedit.data.datasets import load_requests
from circuitedit.data.facts import demo_requests
from circuitedit.workflows.bench.measures import neighbourhood_specificity
from circuitedit.workflows.bench.selection import knows
from circuitedit.workflows.pipeline import check_request

COLUMNS = ("paraphrase_accuracy", "forget_rate", "f_control", "neighbourhood_accuracy",
           "neighbourhood_specificity", "steps", "seconds")


def apply_overrides(config: EditConfig, assignments: list[str]) -> EditConfig:
    data = config.to_dict()
    for assignment in assignments:
        path, _, text = assignment.partition("=")
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if leaf not in node:
            raise SystemExit(f"--set {assignment}: no field {path!r} in EditConfig")
        node[leaf] = json.loads(text) if text not in ("", "None") else None
    return EditConfig.from_dict(data)


def counterfact_tail(model, tokenizer, path: str, count: int) -> list:
    """The last `count` records of the file that the unedited model knows."""
    requests = load_requests(path, "counterfact-rome")
    kept = []
    for request in reversed(requests):
        if len(kept) == count:
            break
        try:
            check_request(tokenizer, request)
        except TargetTokenizationError:
            continue
        if knows(model, tokenizer, [request], "counterfact-rome")[0]:
            kept.append(request)
    return kept


def record_for(label: str, result, specificity) -> dict:
    m = result.metrics
    return {"label": label, "subject": result.request.subject,
            **{k: m.get(k) for k in COLUMNS[:4]}, "neighbourhood_specificity": specificity,
            "steps": result.outcome.steps, "seconds": result.timings["total_s"],
            "stage_steps": {s.name: s.steps for s in result.outcome.stages}}


def print_table(records: list[dict]) -> None:
    print("| subject | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for r in records:
        cells = ["-" if r[c] is None else f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        print(f"| {r['subject']} | " + " | ".join(cells) + " |")
    means = []
    for c in COLUMNS:
        values = [r[c] for r in records if r[c] is not None]
        means.append(f"{mean(values):.3f}" if values else "-")
    print("| **mean** | " + " | ".join(means) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("counterfact", nargs="?", help="counterfact-rome-train.json (ROME schema)")
    parser.add_argument("--n-counterfact", type=int, default=6)
    parser.add_argument("--skip-counterfact", type=int, default=0,
                        help="leave out the first K of those facts (to extend an earlier run)")
    parser.add_argument("--no-demo", action="store_true", help="CounterFact facts only")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=JSON")
    parser.add_argument("--label", default="default")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:PATH=JSON;PATH=JSON",
                        help="also edit each fact with these overrides (on top of --set), right after "
                             "the --label run of the same fact, so that timings are compared in one run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    if args.table_only:
        records = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        print_table([r for r in records if r["label"] == args.label])
        return
    variants = {args.label: apply_overrides(EditConfig(), args.set)}
    for spec in args.variant:
        label, _, assignments = spec.partition(":")
        variants[label] = apply_overrides(EditConfig(), args.set + [a for a in assignments.split(";") if a])
    model, tokenizer = load_model(args.model)
    requests = [] if args.no_demo else list(demo_requests())
    if args.counterfact:
        requests += counterfact_tail(model, tokenizer, args.counterfact, args.n_counterfact)[args.skip_counterfact:]
    records: dict[str, list[dict]] = {label: [] for label in variants}
    for request in requests:
        for label, config in variants.items():
            tick = time.perf_counter()
            result = edit(model, tokenizer, request, config)
            specificity = neighbourhood_specificity(result.model, tokenizer, request)
            record = record_for(label, result, specificity)
            records[label].append(record)
            print(f"[{label}] {request.subject}: {json.dumps({k: record[k] for k in COLUMNS})} "
                  f"({time.perf_counter() - tick:.0f} s)", flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
    for label in variants:
        overrides = args.set + next((s.partition(":")[2].split(";") for s in args.variant
                                     if s.partition(":")[0] == label), [])
        print(f"\n{label}: {', '.join(o for o in overrides if o) or 'defaults'}\n")
        print_table(records[label])


if __name__ == "__main__":
    main()
