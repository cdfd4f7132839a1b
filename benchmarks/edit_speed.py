"""Time one full edit of the demo fact on the embedded model, stage by stage.

    python benchmarks/edit_speed.py [--model M] [--repeats N]

Prints a markdown table: load, localization, each training stage (steps, seconds), evaluation
and total. Numbers come from one run on this machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import time

from circuitedit import edit, load_model
from circuitedit.evaluate.facts import demo_requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--request", type=int, default=0, help="index of the built-in demo request")
    parser.add_argument("--dtype", default="auto", help="auto, fp32 or bf16")
    args = parser.parse_args()

    tick = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    load_s = time.perf_counter() - tick
    request = demo_requests()[args.request]
    result = edit(model, tokenizer, request)
    t = result.timings
    rows = [("load model (safetensors cache)", "", load_s),
            ("evaluate before (probes + control facts)", "", t["evaluate_before_s"]),
            ("localize (attribution patching)", f"{result.localization.passes} passes", t["localize_s"]),
            ("prepare (prefixes, retain set, model copy)", "", t["prepare_s"])]
    for stage in result.outcome.stages:
        rows.append((f"stage {stage.name}", f"{stage.steps} steps", stage.seconds))
    rows += [("evaluate after", "", t["evaluate_after_s"]),
             ("edit total (excl. load)", f"{result.outcome.steps} steps", t["total_s"]),
             ("edit total without evaluation", "", t["total_s"] - t["evaluate_before_s"] - t["evaluate_after_s"])]
    print(f"\nEdit: {request.subject}: {request.old_object} -> {request.new_object}  "
          f"(components: {', '.join(c.name for c in result.components)})\n")
    print("| phase | work | seconds |\n|---|---|---:|")
    for name, work, seconds in rows:
        print(f"| {name} | {work} | {seconds:.1f} |")
    m = result.metrics
    print(f"\nnew-fact {m['new_fact_accuracy']:.2f}, held-out paraphrases {m['paraphrase_accuracy']:.2f}, "
          f"forget {m['forget_rate']:.2f}, F_control {m['f_control']:.2f}")


if __name__ == "__main__":
    main()
