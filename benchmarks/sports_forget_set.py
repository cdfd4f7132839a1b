"""Mechanistic Unlearning's forget-set protocol on Sports Facts (Guo et al. 2024): every known
athlete of one sport rewritten at once, in one model.

    python benchmarks/sports_forget_set.py ../shared/data/sports/sports.csv \\
        [--sport basketball] [--sizes 16,64] [--retain 64] \\
        [--methods unlearn-then-learn,learn-only,memit,alphaedit] [--out runs/sports-forget] [--model M]

The forget set is the file's first N athletes of --sport the unedited model knows (the true sport
ranks first of the three); each is rewritten to another sport (the loader's seeded choice). The
retained set is --retain known athletes of the other sports, never edited. Each method writes the
whole forget set in one update (`edit_together`), and is measured on:
  forget rewritten: share of the forget set whose new sport ranks first of the three;
  forget old gone: share whose true sport no longer ranks first;
  retained: share of the retained set whose true sport still ranks first (unedited: 1.0);
  MC old first: multiple choice (the three sports as lettered options, every rotation), share of
    the forget set where the true sport's letter ranks first;
  relearned: a relearning attack: full fine-tuning (non-embedding weights, Adam, lr 3e-5 as `audit`) on the first half
    of the forget set with their true sports for --relearn-steps steps, then the share of the
    other half whose true sport ranks first again (unedited-and-untouched: 1.0).
OUT/results.jsonl holds one row per (size, method) and makes the run resumable; prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from circuitedit import load_model
from circuitedit.audit.relearn import finetune
from circuitedit.core.forward import object_logprobs
from circuitedit.data.datasets import SPORTS, load_requests
from circuitedit.evaluate.multiple_choice import choice_set, multiple_choice_scores
from circuitedit.workflows.bench.selection import knows
from circuitedit.workflows.pipeline import EditConfig
from circuitedit.workflows.together import edit_together

COLUMNS = ("forget_rewritten", "forget_old_gone", "retained", "mc_old_first", "relearned", "seconds")


def top_sport(model, tokenizer, requests) -> list[str]:
    prompts = [r.text for r in requests for _ in SPORTS]
    scores = object_logprobs(model, tokenizer, prompts, [s for _ in requests for s in SPORTS])
    return [SPORTS[int(row.argmax())] for row in scores.view(len(requests), len(SPORTS))]


def share(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


def measures(model, tokenizer, forget, retained, relearn_steps: int) -> dict:
    forget_top = top_sport(model, tokenizer, forget)
    mc = [multiple_choice_scores(model, tokenizer, choice_set(tokenizer, r, [s for s in SPORTS if s not in
                                                                            (r.old_object, r.new_object)]))
          for r in forget]
    half = len(forget) // 2
    tuned = finetune(model, tokenizer, [(r.text, " " + r.old_object) for r in forget[:half]], relearn_steps, 3e-5)
    return {
        "forget_rewritten": share(t == r.new_object for t, r in zip(forget_top, forget, strict=True)),
        "forget_old_gone": share(t != r.old_object for t, r in zip(forget_top, forget, strict=True)),
        "retained": share(t == r.old_object for t, r in zip(top_sport(model, tokenizer, retained), retained,
                                                            strict=True)),
        "mc_old_first": share(m["old_first"] for m in mc if m is not None),
        "relearned": share(t == r.old_object for t, r in zip(top_sport(tuned, tokenizer, forget[half:]),
                                                             forget[half:], strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--sport", default="basketball", choices=SPORTS)
    parser.add_argument("--sizes", default="16,64")
    parser.add_argument("--retain", type=int, default=64)
    parser.add_argument("--methods", default="unlearn-then-learn,learn-only,memit,alphaedit")
    parser.add_argument("--relearn-steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/sports-forget"))
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    sizes = [int(s) for s in args.sizes.split(",")]
    requests = load_requests(args.data, "sports")
    known = [r for r, ok in zip(requests, knows(model, tokenizer, requests, "sports"), strict=True) if ok]
    pool = [r for r in known if r.old_object == args.sport]
    retained = [r for r in known if r.old_object != args.sport][: args.retain]
    print(f"{len(known)} of {len(requests)} athletes known; {len(pool)} of {args.sport}; {len(retained)} retained")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for size in sizes:
        forget = pool[:size]
        if len(forget) < size:
            print(f"only {len(forget)} known athletes of {args.sport}: size {size} runs with them")
        for method in ["none", *args.methods.split(",")]:
            if any(r["size"] == size and r["method"] == method for r in rows):
                continue
            tick = time.perf_counter()
            edited = model if method == "none" else \
                edit_together(model, tokenizer, forget, EditConfig(method=method), controls=[])[0].model
            seconds = time.perf_counter() - tick
            row = {"size": len(forget), "method": method, **measures(edited, tokenizer, forget, retained,
                                                                       args.relearn_steps), "seconds": seconds}
            rows.append(row)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    print("\n| forget set | method | " + " | ".join(COLUMNS) + " |")
    print("|---:|---|" + "---:|" * len(COLUMNS))
    for row in rows:
        print(f"| {row['size']} | {row['method']} | " + " | ".join(f"{row[k]:.3f}" for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
