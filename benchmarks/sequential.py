"""Many CounterFact edits in one model, per method: curves and a table against the number of edits.

    python benchmarks/sequential.py ../shared/data/counterfact/counterfact-rome-train.json \\
        --methods memit,alphaedit,unlearn-then-learn --edits 100 --batch 10 --together memit,alphaedit \\
        [--out runs/sequential] [--model M]

The facts are the file's first --edits the unedited model states (greedy continuation contains
the true object, as `bench` selects them), one per subject and relation, in file order. Each
method edits them into one model, in batches of --batch (a method named in --together writes each
batch in one update, the others edit one fact after another and are measured after each batch),
recording an edit history under OUT/<method>: rerunning the same command resumes every method
where it stopped (a killed run loses at most the edit in progress). After each batch every fact
edited so far is re-measured (efficacy, paraphrase and neighbourhood scores, earlier edits still
stated), with F_control against the unedited model and the n-gram entropy of generations.
Prints a table at 10, 50, 100, 200, 500 and 1000 edits (those reached), the seconds per edit of
each method as a ratio to the first method's (the same run), and writes OUT/curves.png.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from circuitedit import load_model
from circuitedit.data.datasets import load_requests
from circuitedit.workflows.bench.provenance import software
from circuitedit.workflows.bench.selection import select_facts
from circuitedit.workflows.history import EditHistory
from circuitedit.workflows.pipeline import EditConfig
from circuitedit.workflows.sequence import run_sequence
from circuitedit.workflows.together import fact_key

MARKS = (10, 50, 100, 200, 500, 1000)
COLUMNS = {"efficacy": "efficacy", "paraphrase_efficacy": "paraphrase", "neighbourhood_specificity": "neighbourhood",
           "earlier_retained": "earlier kept", "f_control": "F_control", "generation_entropy": "entropy"}


def distinct(requests):
    seen, kept = set(), []
    for request in requests:
        if fact_key(request) not in seen:
            seen.add(fact_key(request))
            kept.append(request)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--methods", default="memit,alphaedit,unlearn-then-learn")
    parser.add_argument("--together", default="memit,alphaedit", help="methods that write a batch in one update")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/sequential"))
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    loaded = load_model(args.model)
    requests = distinct(load_requests(args.data, "counterfact-rome"))
    selection = select_facts(loaded.model, loaded.tokenizer, requests, "counterfact-rome", args.edits)
    facts = [requests[i] for i in selection.kept]
    print(f"{len(facts)} facts the model states, of the first {selection.scanned} records")
    together = {m.strip() for m in args.together.split(",") if m.strip()}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        history = EditHistory.start(args.out / method, loaded.name)
        print(f"{method}: {len(history.requests())} of {len(facts)} edits held")
        run_sequence(loaded.model, loaded.tokenizer, facts, history, EditConfig(method=method),
                     batch_size=args.batch, together=method in together, software=software(),
                     on_batch=lambda m, name=method: print(f"{name} {m['edits']:5d} edits: " + " ".join(
                         f"{label} {m[key]:.3f}" for key, label in COLUMNS.items() if m.get(key) is not None)
                         + f" ({m['batch_edit_seconds'] / m['batch_edits']:.1f} s/edit)", flush=True))
    report({m: EditHistory.open(args.out / m).checkpoints for m in methods}, args.out)


def report(checkpoints: dict[str, list[dict]], out: Path) -> None:
    print("\n| method | edits | " + " | ".join(COLUMNS.values()) + " | s/edit |")
    print("|---|---:|" + "---:|" * (len(COLUMNS) + 1))
    for method, rows in checkpoints.items():
        for row in rows:
            if row["edits"] in MARKS or row is rows[-1]:
                cells = " | ".join("-" if row.get(k) is None else f"{row[k]:.3f}" for k in COLUMNS)
                print(f"| {method} | {row['edits']} | {cells} | {seconds_per_edit(rows):.1f} |")
    if checkpoints:
        first = next(iter(checkpoints))
        base = seconds_per_edit(checkpoints[first])
        print("\nseconds per edit as a ratio to " + first + ": " + ", ".join(
            f"{m} {seconds_per_edit(rows) / base:.2f}" for m, rows in checkpoints.items() if rows))
        entropy = next((r["generation_entropy_before"] for rows in checkpoints.values() for r in rows), None)
        print(f"unedited model's entropy: {entropy:.3f}" if entropy else "")
    plot(checkpoints, out / "curves.png")


def seconds_per_edit(rows: list[dict]) -> float:
    edits = sum(r["batch_edits"] for r in rows)
    return sum(r["batch_edit_seconds"] for r in rows) / edits if edits else float("nan")


def plot(checkpoints: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, label) in zip(axes.flat, COLUMNS.items(), strict=True):
        for method, rows in checkpoints.items():
            points = [(r["edits"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=method)
        if key == "generation_entropy":
            before = [r["generation_entropy_before"] for rows in checkpoints.values() for r in rows]
            if before:
                ax.axhline(statistics.fmean(before), color="black", linestyle="--", linewidth=1, label="unedited")
        ax.set_title(label)
        ax.set_xlabel("edits in the model")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
