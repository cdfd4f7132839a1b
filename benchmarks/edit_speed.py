"""Time full edits of a demo fact on the embedded model, stage by stage.

    python benchmarks/edit_speed.py [--model M] [--request I] [--repeats N] [--against GIT_REF]

Prints a markdown table: load, evaluation, localization, preparation, each training stage
(steps, seconds) and the total, as the median of N edits (each in a fresh process, so nothing
is kept in memory between them). Each repeat times the edit three times, as the CLI runs it:
first with an empty reference cache ("cold": the first edit of a model computes the unedited
model's control answers, sampled prefixes and scan of the edit template and stores them), then
reading what that run stored ("warm": a later edit of the model with the same template), then
reading all of it but the template's scan ("warm, new template": a later edit of the model with
a template it has not scanned). With --against, the same edit also runs on the code of
GIT_REF (a git worktree in a temporary directory; timed warm too where it has a reference
cache), alternating old and new, and the table gains the old medians and the ratio to the warm runs:
shared machines are noisy, so compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process against whichever circuitedit is first on PYTHONPATH; it uses only
# the public API that every version has, so an old commit can run it too.
CHILD = """
import json, pathlib, sys, time
from circuitedit import edit, load_model
from circuitedit.evaluate.facts import demo_requests
model_name, index, dtype, references = sys.argv[1] or None, int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    from circuitedit.evaluate.reference_cache import ReferenceCache
    kwargs = {"references": ReferenceCache(pathlib.Path(references))}
except ImportError:  # code from before the reference cache
    kwargs = {}
tick = time.perf_counter()
model, tokenizer = load_model(model_name, dtype=dtype)
load_s = time.perf_counter() - tick
result = edit(model, tokenizer, demo_requests()[index], **kwargs)
print("RESULT " + json.dumps({
    "load_s": load_s, "timings": result.timings, "passes": getattr(result.localization, "passes", None),
    "stages": [[s.name, s.steps, s.seconds, getattr(s, "full_vocab_passes", None)] for s in result.outcome.stages],
    "components": [c.name for c in result.components],
    "metrics": {k: result.metrics[k] for k in ("new_fact_accuracy", "paraphrase_accuracy", "forget_rate", "f_control")},
}))
"""


def run_child(src: Path, args, references: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", CHILD, args.model or "", str(args.request), args.dtype,
                          str(references)],
                         env=env, capture_output=True, text=True, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"edit run against {src} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(line[len("RESULT "):])


def phases(run: dict) -> list[tuple[str, str, float]]:
    t = run["timings"]
    rows = [("load model (safetensors cache)", "", run["load_s"]),
            ("fingerprint the model (reference cache key)", "", t.get("fingerprint_s", 0.0)),
            ("evaluate before (probes + control facts)", "", t["evaluate_before_s"]),
            ("scan the template filled with the pool subjects", "", t.get("scan_s", 0.0)),
            ("localize (attribution patching)", f"{run['passes']} passes", t["localize_s"]),
            ("prepare (prefixes, hard negatives, retain set, model copy)", "", t["prepare_s"])]
    for name, steps, seconds, *full in run["stages"]:
        passes = f" ({full[0]} full LM-head)" if full and full[0] is not None else ""
        rows.append((f"stage {name}", f"{steps} steps{passes}", seconds))
    steps = sum(s[1] for s in run["stages"])
    rows += [("evaluate after", "", t["evaluate_after_s"]),
             ("edit total (excl. load)", f"{steps} steps", t["total_s"]),
             ("edit total without evaluation", "", t["total_s"] - t["evaluate_before_s"] - t["evaluate_after_s"])]
    return rows


def median_rows(runs: list[dict]) -> list[tuple[str, str, float]]:
    tables = [phases(r) for r in runs]
    return [(name, work, statistics.median(t[i][2] for t in tables)) for i, (name, work, _) in enumerate(tables[0])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--request", type=int, default=0, help="index of the built-in demo request")
    parser.add_argument("--dtype", default="auto", help="auto, fp32 or bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", default=None, help="a git ref to time the same edit on")
    args = parser.parse_args()

    cold_runs, warm_runs, new_template_runs, old_runs = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        old_src = None
        if args.against:
            tree = Path(tmp) / "against"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.against],
                           check=True, capture_output=True)
            old_src = tree / "src"
        try:
            for repeat in range(args.repeats):
                references = Path(tmp) / f"references-{repeat}"  # empty: this repeat's cold run fills it
                cold_runs.append(run_child(ROOT / "src", args, references))
                warm_runs.append(run_child(ROOT / "src", args, references))
                unscanned = Path(tmp) / f"references-{repeat}-new-template"
                shutil.copytree(references, unscanned, ignore=shutil.ignore_patterns("scan-*"))
                new_template_runs.append(run_child(ROOT / "src", args, unscanned))
                if old_src:
                    # Old code with a reference cache is timed warm too (its first run fills it);
                    # code from before the cache computes everything each time.
                    old_references = Path(tmp) / f"against-references-{repeat}"
                    old_runs.append(run_child(old_src, args, old_references))
                    if "fingerprint_s" in old_runs[-1]["timings"]:
                        old_runs[-1] = run_child(old_src, args, old_references)
                print(f"run {repeat + 1}/{args.repeats}: warm {warm_runs[-1]['timings']['total_s']:.1f} s, "
                      f"new template {new_template_runs[-1]['timings']['total_s']:.1f} s, "
                      f"cold {cold_runs[-1]['timings']['total_s']:.1f} s"
                      + (f" (against: {old_runs[-1]['timings']['total_s']:.1f} s)" if old_src else ""),
                      file=sys.stderr, flush=True)
        finally:
            if old_src:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)

    last = warm_runs[-1]
    print(f"\nEdit: request {args.request}, components {', '.join(last['components'])}; "
          f"median of {args.repeats} runs, each in a fresh process\n")
    warm, cold, new_template = median_rows(warm_runs), median_rows(cold_runs), median_rows(new_template_runs)
    header = "| phase | work | seconds (warm) | seconds (warm, new template) | seconds (cold) |"
    rule = "|---|---|---:|---:|---:|"
    if old_runs:
        header += f" {args.against}: work | {args.against}: seconds | warm / {args.against} |"
        rule += "---|---:|---:|"
    print(header + "\n" + rule)
    old = median_rows(old_runs) if old_runs else [None] * len(warm)
    for (name, work, seconds), (_, _, unscanned_seconds), (_, _, cold_seconds), before in zip(
            warm, new_template, cold, old, strict=True):
        line = f"| {name} | {work} | {seconds:.1f} | {unscanned_seconds:.1f} | {cold_seconds:.1f} |"
        if before is not None:
            ratio = f"{seconds / before[2]:.2f}" if before[2] else "-"
            line += f" {before[1]} | {before[2]:.1f} | {ratio} |"
        print(line)
    m = last["metrics"]
    print(f"\nnew-fact {m['new_fact_accuracy']:.2f}, held-out paraphrases {m['paraphrase_accuracy']:.2f}, "
          f"forget {m['forget_rate']:.2f}, F_control {m['f_control']:.2f}")


if __name__ == "__main__":
    main()
