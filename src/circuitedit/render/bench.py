"""Bench summaries as a person reads them: the Markdown table and the bar chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUMMARY_METRICS = {
    "new_fact_accuracy": "new-fact accuracy",
    "paraphrase_accuracy": "unseen-paraphrase accuracy",
    "paraphrase_accuracy_stated": "unseen paraphrases where the old fact was stated",
    "forget_rate": "forget rate",
    "forget_rate_stated": "forget rate where the old fact was stated",
    "forget_rate_strict": "forget rate, a mention inside the subject counted too",
    "paraphrase_accuracy_strict": "unseen-paraphrase accuracy, a mention inside the subject counted too",
    "f_control": "F_control (built-in facts stated)",
    "f_control_clear": "F_control (built-in facts stated by a clear margin)",
    "f_control_dataset": "F_control (the dataset's other facts stated)",
    "neighbourhood_accuracy": "neighbourhood accuracy (stated)",
    "neighbourhood_accuracy_clear": "neighbourhood accuracy (stated by a clear margin)",
    "question_accuracy": "question form through the chat template (chat models)",
    "efficacy": "CF efficacy P(new)>P(old)",
    "paraphrase_efficacy": "CF paraphrase P(new)>P(old)",
    "neighbourhood_specificity": "CF neighbourhood P(true)>P(new)",
    "mc_new_first": "multiple choice: new first",
    "mc_old_gone": "multiple choice: old gone",
    "not_forgotten": "audit: not forgotten",
    "soft_forgetting": "audit: soft forgetting",
    "hard_forgetting": "audit: hard forgetting",
    "reach_logit_lens": "audit: reached by logit lens",
    "reach_linear_probe": "audit: reached by a linear probe",
    "reach_indirect_prompts": "audit: reached by indirect prompts",
    "reach_formats": "audit: reached in another format",
    "reach_relearning": "audit: brought back by relearning",
    "generation_entropy": "fluency: n-gram entropy",
    "perplexity": "fluency: neutral-text perplexity",
    "trainable_parameters": "trainable parameters",
    "steps": "optimizer steps",
    "seconds": "seconds per edit",
    "audit_seconds": "seconds per audit",
}
PLOT_METRICS = ("new_fact_accuracy", "paraphrase_accuracy", "forget_rate", "f_control",
                "neighbourhood_specificity", "mc_new_first")


def cell_text(stat: dict | None, name: str) -> str:
    if not stat:
        return "–"
    if name in ("trainable_parameters", "steps", "seconds", "audit_seconds", "perplexity"):
        fmt = (lambda v: f"{v:,.0f}") if name == "trainable_parameters" else (lambda v: f"{v:.1f}")
    else:
        fmt = lambda v: f"{v:.3f}"  # noqa: E731
    if stat["n"] < 2 or stat["low"] == stat["high"]:
        return fmt(stat["mean"])
    return f"{fmt(stat['mean'])} [{fmt(stat['low'])}, {fmt(stat['high'])}]"


def speed_row(summary: dict, labels: list[str]) -> str | None:
    """Each method's speed as a ratio to the IA3 recipe's: the median over facts of the two
    methods' seconds on the same fact in this run (`speed_against_baseline`)."""
    speed = summary.get("times_faster_than_unlearn_then_learn") or {}
    if len(speed) < 2:
        return None
    cells = [f"{speed[label]:.2f}x" if label in speed else "–" for label in labels]
    return "| times faster than unlearn-then-learn (median over facts, this run) | " + " | ".join(cells) + " |"


def summary_markdown(summary: dict) -> str:
    methods = summary["methods"]
    sel = summary["selection"]
    lines = [
        "# circuitedit bench",
        "",
        f"- model: `{summary['model']}`; data: `{summary['data']}` ({summary['format']})",
        f"- facts: {sel['kept_count']} kept of {sel['scanned']} scanned ({sel['criterion']}); "
        f"{sel['untokenizable']} skipped as not expressible by the tokenizer",
        f"- single-edit protocol: each fact edited on a fresh copy of the base model; "
        f"mean [95% bootstrap interval] over facts ({summary['bootstrap']} resamples)",
        f"- base model: neutral-text perplexity {summary['base']['perplexity']:.1f}",
        f"- F_control counts every control fact the unedited model states; on the dataset, over "
        f"{summary.get('dataset_controls') or 0} other facts of the file it states (never edited)",
        *summary.get("software", []),
        "",
    ]
    labels = list(methods)
    lines.append("| metric | " + " | ".join(labels) + " |")
    lines.append("|---|" + "---|" * len(labels))
    lines.append("| facts (errors) | " + " | ".join(f"{methods[m]['n']} ({methods[m]['errors']})" for m in labels) + " |")
    for name, title in SUMMARY_METRICS.items():
        if not any(name in methods[m]["metrics"] for m in labels):
            continue
        lines.append(f"| {title} | " + " | ".join(cell_text(methods[m]["metrics"].get(name), name) for m in labels) + " |")
    if speed := speed_row(summary, labels):
        lines.append(speed)
    moved = summary.get("moved_by_reading_the_answer") or {}
    if moved:
        lines.append("| facts whose forget / paraphrase figure reading the answer changed | "
                     + " | ".join(f"{moved.get(m, {}).get('forget', 0)} / {moved.get(m, {}).get('paraphrase', 0)}"
                                  for m in labels) + " |")
    audits = summary.get("audits") or []
    if audits:
        lines += ["", "Audit verdict per fact (hard / soft / not forgotten; for soft, what still reaches the "
                  "old object: logit lens, linear probe, indirect prompts, formats, relearning):", "",
                  "| fact | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines += [f"| {row['fact']} | " + " | ".join(row["verdicts"].get(m, "–") for m in labels) + " |"
                  for row in audits]
    before = summary.get("before", {})
    if before:
        names = {"mc_old_first": "multiple choice: old first", **SUMMARY_METRICS}
        lines += ["", "Unedited model on the same facts: " + ", ".join(
            f"{names.get(k, k)} {v:.3f}" for k, v in before.items() if v is not None)]
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = summary["methods"]
    labels = list(methods)
    metrics = [m for m in PLOT_METRICS if any(m in methods[x]["metrics"] for x in labels)]
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.18 * len(metrics) * len(labels) + 3)), 4.5))
    width = 0.8 / max(len(labels), 1)
    colors = plt.get_cmap("tab20").colors
    for i, label in enumerate(labels):
        stats = [methods[label]["metrics"].get(m) for m in metrics]
        means = [s["mean"] if s else 0.0 for s in stats]
        errors = np.array([[s["mean"] - s["low"], s["high"] - s["mean"]] if s else [0.0, 0.0] for s in stats]).T
        xs = np.arange(len(metrics)) + (i - (len(labels) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=errors if len(metrics) else None, capsize=2, label=label,
               color=colors[i % len(colors)])
    ax.set_xticks(np.arange(len(metrics)))
    ax.set_xticklabels([SUMMARY_METRICS[m] for m in metrics], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over facts (95% bootstrap CI)")
    ax.set_title(f"{summary['model']}: {summary['selection']['kept_count']} facts")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
