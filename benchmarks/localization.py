"""Compare the localizers on facts the model knows: cost and agreement with exact activation patching.

    python benchmarks/localization.py ../shared/data/known/known_1000.json [--facts 12]
        [--methods attribution,causal-tracing,...] [--model M] [--edit-facts N [--edits-out F.jsonl]]

Facts come from a ROME-style known-facts file (subject, attribute, template/prompt), in file
order, kept when the model's greedy continuation of the prompt contains the attribute. For each
method: seconds and forward+backward passes per fact (batched forwards count once, as the
localizers report them), and agreement with activation patching (the reference, run on the same
facts): Spearman correlation of the per-component scores (max |score| over position groups; a
component a method does not score counts as 0) over all heads and MLPs, and the overlap of the
top 10. Prints markdown tables. Timings on a shared CPU: compare ratios, not absolutes.

--edit-facts N additionally edits the first N facts with circuitedit.edit on the components each
localizer yields under edit()'s own selection policy and reports the edit metrics per localizer,
with each one's paired difference from random localization (slow: one full unlearn-then-learn
edit per fact and method; --edits-out makes it resumable).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path

from scipy.stats import spearmanr

from circuitedit import edit, load_model
from circuitedit.core.generate import greedy_continuations
from circuitedit.core.matching import contains_object
from circuitedit.core.tokens import TargetTokenizationError
from circuitedit.data.facts import control_facts
from circuitedit.data.requests import EditRequest, InvalidRequestError
from circuitedit.evaluate.snapshots import Probe, take_snapshot
from circuitedit.localize import LocalizationError, LocalizeConfig, localize
from circuitedit.localize.corruption import subject_token_positions
from circuitedit.models.arch import get_adapter
from circuitedit.workflows.pipeline import EditConfig, check_request

REFERENCE = "activation"
DEFAULT_METHODS = ("attribution", "gradient", "causal-tracing", "fact-lookup", "random", "all-layers")
EDIT_METRICS = ("new_fact_accuracy", "forget_rate", "f_control")


def read_known(path: Path, seed: int = 0) -> list[EditRequest]:
    """EditRequests from a known-facts file; the new object is another fact's attribute of the
    same relation (any other attribute when the relation has no other)."""
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    by_relation: dict[str, list[str]] = {}
    for r in records:
        by_relation.setdefault(r.get("relation_id", ""), []).append(r["attribute"])
    everything = [r["attribute"] for r in records]
    rng = random.Random(seed)
    requests = []
    for r in records:
        prompt = r.get("prompt") or r["template"].format(r["subject"])
        pool = [a for a in by_relation.get(r.get("relation_id", ""), []) if a.casefold() != r["attribute"].casefold()]
        pool = pool or [a for a in everything if a.casefold() != r["attribute"].casefold()]
        try:
            requests.append(EditRequest(subject=r["subject"], prompt=prompt, old_object=r["attribute"],
                                        new_object=rng.choice(pool), relation=r.get("relation_id"),
                                        case_id=str(r.get("known_id", len(requests)))))
        except InvalidRequestError:
            continue
    return requests


def select_known(model, tokenizer, requests: list[EditRequest], n: int, batch_size: int = 32) -> tuple[list[EditRequest], int]:
    kept: list[EditRequest] = []
    scanned = 0
    while len(kept) < n and scanned < len(requests):
        chunk = []
        for request in requests[scanned:scanned + batch_size]:
            try:
                check_request(tokenizer, request)
                subject_token_positions(tokenizer, request.prompt, request.subject)
                chunk.append(request)
            except (TargetTokenizationError, LocalizationError, ValueError):
                pass
        scanned += batch_size
        texts = greedy_continuations(model, tokenizer, [r.text for r in chunk], max_new_tokens=8)
        kept.extend(r for r, t in zip(chunk, texts, strict=True) if contains_object(t, r.old_object))
    return kept[:n], min(scanned, len(requests))


def score_vector(result, components) -> list[float]:
    scores = result.component_scores()
    return [scores.get(c, 0.0) for c in components]


def top(result, components, k: int = 10) -> set:
    scores = result.component_scores()
    return {c for c in sorted(components, key=lambda c: (-scores.get(c, 0.0), c))[:k]}


def fmt(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("known", type=Path, help="known-facts JSON (e.g. ../shared/data/known/known_1000.json)")
    parser.add_argument("--facts", type=int, default=12)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated localizers")
    parser.add_argument("--model", default=None)
    parser.add_argument("--top-k", type=int, default=None, help="components per edit (default: edit()'s)")
    parser.add_argument("--kinds", choices=["both", "heads", "mlps"], default=None,
                        help="component kinds per edit (default: edit()'s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--edit-facts", type=int, default=0, help="also edit this many facts per localizer")
    parser.add_argument("--edits-out", type=Path, default=None,
                        help="append each --edit-facts edit here (JSONL); a rerun skips the edits already there")
    parser.add_argument("--json-out", type=Path, default=None, help="write the raw per-fact numbers here")
    parser.add_argument("--table-only", action="store_true",
                        help="print the edit-quality table from --edits-out and stop (no model, no edits)")
    args = parser.parse_args()
    if args.table_only:
        if not args.edits_out or not args.edits_out.exists():
            parser.error("--table-only needs an existing --edits-out file")
        table_from_file(args.edits_out)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != REFERENCE]

    model, tokenizer = load_model(args.model)
    adapter = get_adapter(model)
    components = adapter.all_layer_components(model)
    facts, scanned = select_known(model, tokenizer, read_known(args.known, args.seed), args.facts)
    print(f"{len(facts)} known facts (of {scanned} scanned); {len(components)} components; "
          f"methods: {REFERENCE} (reference), {', '.join(methods)}")
    config = LocalizeConfig(seed=args.seed)
    localize(model, tokenizer, facts[0], LocalizeConfig(method="attribution"))  # warm-up, not timed

    rows: dict[str, dict[str, list]] = {m: {"seconds": [], "passes": [], "spearman": [], "top10": []}
                                        for m in [REFERENCE, *methods]}
    results: list[dict] = []
    for index, request in enumerate(facts):
        per_fact = {}
        for method in [REFERENCE, *methods]:
            cfg = LocalizeConfig(**{**config.__dict__, "method": method})
            tick = time.perf_counter()
            result = localize(model, tokenizer, request, cfg)
            seconds = time.perf_counter() - tick
            per_fact[method] = result
            rows[method]["seconds"].append(seconds)
            rows[method]["passes"].append(result.passes)
            ref = per_fact[REFERENCE]
            x, y = score_vector(result, components), score_vector(ref, components)
            rho = float("nan") if len(set(x)) < 2 else float(spearmanr(x, y).statistic)
            rows[method]["spearman"].append(rho)
            overlap = float("nan") if result.selects_all else len(top(result, components) & top(ref, components)) / 10
            rows[method]["top10"].append(overlap)
        results.append({"subject": request.subject, "prompt": request.text, "old": request.old_object,
                        "request": request, "localizations": per_fact})
        print(f"  fact {index + 1}/{len(facts)} {request.subject!r}: "
              + ", ".join(f"{m} {rows[m]['seconds'][-1]:.1f}s" for m in [REFERENCE, *methods]), flush=True)

    ref_seconds = statistics.fmean(rows[REFERENCE]["seconds"])
    print(f"\n{len(facts)} facts, model {getattr(model.config, 'model_type', '?')}, "
          f"{adapter.num_layers(model)} layers x ({adapter.num_heads(model)} heads + MLP); "
          "agreement is with exact activation patching (mean ± sd over facts)\n")
    print("| method | s / fact | time / activation | passes / fact | Spearman vs activation | top-10 overlap |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in [REFERENCE, *methods]:
        row = rows[method]
        mean_s = statistics.fmean(row["seconds"])
        print(f"| {method} | {mean_s:.2f} | {mean_s / ref_seconds:.3f} | {statistics.fmean(row['passes']):.1f} | "
              f"{fmt(row['spearman'])} | {fmt(row['top10'])} |")

    if args.edit_facts:
        edit_table(model, tokenizer, results[: args.edit_facts], [REFERENCE, *methods], args)

    if args.json_out:
        args.json_out.write_text(json.dumps({"rows": rows, "facts": [
            {**{k: v for k, v in r.items() if k not in ("localizations", "request")},
             "scores": {m: {c.name: s for c, s in res.component_scores().items()} for m, res in r["localizations"].items()}}
            for r in results]}, indent=1, default=str) + "\n")


def edit_table(model, tokenizer, results: list[dict], methods: list[str], args) -> None:
    """Edit each fact once per localizer, with the components `edit()` itself would select from
    that localization (the default policy, or --top-k / --kinds), and tabulate the edit metrics.

    With --edits-out, every finished edit is appended there at once and a rerun skips it, so the
    slow part spreads over several sittings."""
    controls = control_facts()
    edit_config = EditConfig()
    if args.top_k:
        edit_config.localize.top_k = args.top_k
    if args.kinds:
        edit_config.localize.kinds = args.kinds
    num_layers = get_adapter(model).num_layers(model)
    done = _read_edits(args.edits_out)
    probes = [Probe("control", f.prompt, f.answer) for f in controls]
    baseline = None
    for index, entry in enumerate(results):
        request = _request(entry)
        for method in methods:
            key = (request.case_id, method)
            if key in done:
                continue
            if baseline is None:
                baseline = take_snapshot(model, tokenizer, request, probes, edit_config.evaluate,
                                         kinds={"control"}, margins=True)
            chosen = entry["localizations"][method].select_by(edit_config.localize, num_layers)
            result = edit(model, tokenizer, request, edit_config, controls=controls,
                          control_baseline=baseline, components=chosen)
            line = {"case_id": request.case_id, "subject": request.subject, "method": method,
                    "components": [c.name for c in chosen], "steps": result.outcome.steps,
                    **{k: result.metrics.get(k) for k in EDIT_METRICS}}
            done[key] = line
            if args.edits_out:
                with open(args.edits_out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")
            print(f"  edit {index + 1}/{len(results)} {request.subject!r} [{method}]: "
                  + ", ".join(f"{k} {result.metrics.get(k)}" for k in EDIT_METRICS), flush=True)
    cases = [_request(e).case_id for e in results]
    policy = edit_config.localize
    print_edit_table(done, cases, methods, f"top-{policy.top_k} {policy.kinds} at {policy.positions} positions")


def print_edit_table(done: dict[tuple, dict], cases: list[str], methods: list[str], policy: str) -> None:
    """The edit-quality table over the facts that every method has edited (same facts for all)."""
    complete = [c for c in cases if all((c, m) in done for m in methods)]
    table = {m: [done[(c, m)] for c in complete] for m in methods}
    print(f"\nEdit quality per localization ({len(complete)} facts edited by every localizer; the edit's own "
          f"selection policy: {policy}; all-layers edits every MLP). Paired difference from random "
          "localization on the same facts: mean [95% bootstrap interval].\n")
    print("| localizer | facts | components | steps | " + " | ".join(EDIT_METRICS) + " | F_control - random | forget - random |")
    print("|---|---:|---:|---:|" + "---:|" * (len(EDIT_METRICS) + 2))
    random_rows = {r["case_id"]: r for r in table.get("random", [])}
    for method in methods:
        rows = table[method]
        if not rows:
            continue
        cells = [fmt([_num(r[k]) for r in rows]) for k in EDIT_METRICS]
        diffs = [_paired(rows, random_rows, k) if method != "random" else "-" for k in ("f_control", "forget_rate")]
        print(f"| {method} | {len(rows)} | {statistics.fmean(len(r['components']) for r in rows):.0f} | "
              f"{statistics.fmean(r['steps'] for r in rows):.1f} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")


def table_from_file(path: Path) -> None:
    """--table-only: the edit-quality table from an --edits-out file, no model needed."""
    done = _read_edits(path)
    cases = list(dict.fromkeys(case for case, _ in done))
    methods = list(dict.fromkeys(method for _, method in done))
    print_edit_table(done, cases, methods, "as recorded in the file")


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _paired(rows: list[dict], reference: dict[str, dict], key: str) -> str:
    diffs = [_num(r[key]) - _num(reference[r["case_id"]][key]) for r in rows if r["case_id"] in reference]
    diffs = [d for d in diffs if not math.isnan(d)]
    if len(diffs) < 2:
        return "-"
    rng = random.Random(0)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
    return f"{statistics.fmean(diffs):+.3f} [{means[50]:+.3f}, {means[1949]:+.3f}]"


def _read_edits(path: Path | None) -> dict[tuple, dict]:
    if not path or not path.exists():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by an interrupted run: redo that edit
            continue
        done[(row["case_id"], row["method"])] = row
    return done


def _request(entry: dict) -> EditRequest:
    return entry["request"]


if __name__ == "__main__":
    main()
