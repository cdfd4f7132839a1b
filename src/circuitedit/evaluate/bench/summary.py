"""Aggregation (means, bootstrap intervals) and OUT/summary.{json,md,png,html}."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...html_report import bench_html
from ...report import write_text_atomic
from .config import BenchConfig
from .provenance import software_lines
from .selection import Selection

# Rows of the summary table, in order (rates first, then costs).
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



def bootstrap_interval(values: Sequence[float], samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def aggregate(records: Sequence[dict], samples: int = 1000, seed: int = 0) -> dict:
    """{label: {"n", "errors", "metrics": {metric: {mean, low, high, n}}}}, labels in first-seen order."""
    latest: dict[tuple, dict] = {}
    for rec in records:
        latest[(rec["key"], rec["method"], rec.get("localizer"))] = rec
    out: dict[str, dict] = {}
    for rec in latest.values():
        entry = out.setdefault(rec["label"], {"method": rec["method"], "localizer": rec.get("localizer"),
                                              "n": 0, "errors": 0, "values": {}})
        if rec.get("error"):
            entry["errors"] += 1
            continue
        entry["n"] += 1
        for name, value in rec["metrics"].items():
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, (int, float)) and value == value:  # skip None and NaN
                entry["values"].setdefault(name, []).append(float(value))
    for entry in out.values():
        stats = {}
        for name, values in entry.pop("values").items():
            low, high = bootstrap_interval(values, samples, seed)
            stats[name] = {"mean": float(np.mean(values)), "low": low, "high": high, "n": len(values)}
        entry["metrics"] = stats
    return out


def _cell(stat: dict | None, name: str) -> str:
    if not stat:
        return "–"
    if name in ("trainable_parameters", "steps", "seconds", "audit_seconds", "perplexity"):
        fmt = (lambda v: f"{v:,.0f}") if name == "trainable_parameters" else (lambda v: f"{v:.1f}")
    else:
        fmt = lambda v: f"{v:.3f}"  # noqa: E731
    if stat["n"] < 2 or stat["low"] == stat["high"]:
        return fmt(stat["mean"])
    return f"{fmt(stat['mean'])} [{fmt(stat['low'])}, {fmt(stat['high'])}]"


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
        lines.append(f"| {title} | " + " | ".join(_cell(methods[m]["metrics"].get(name), name) for m in labels) + " |")
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


def write_summary(out: Path, summary: dict) -> None:
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "summary.md", summary_markdown(summary))
    tmp = out / "summary.tmp.png"
    bar_chart(summary, tmp)
    os.replace(tmp, out / "summary.png")
    write_text_atomic(out / "summary.html", bench_html(summary, (out / "summary.png").read_bytes()))


REACH_SHORT = {"logit lens": "lens", "linear probe": "probe", "indirect prompts": "prompts", "formats": "formats",
               "relearning": "relearn"}


def audit_verdicts(records: Sequence[dict]) -> list[dict]:
    """One row per audited fact: {"fact", "verdicts": {label: "soft (lens, probe, ...)"}}, file order."""
    rows: dict[str, dict] = {}
    for rec in records:
        if rec.get("error") or "audit" not in rec:
            continue
        row = rows.setdefault(rec["key"], {"fact": f"{rec['subject']}: {rec['old']} -> {rec['new']}", "verdicts": {}})
        reaching = sorted({short for name in rec["audit"]["reaching"] for prefix, short in REACH_SHORT.items()
                           if name.startswith(prefix)})
        label = rec["audit"]["verdict"].split()[0]  # hard | soft | not
        row["verdicts"][rec["label"]] = label + (f" ({', '.join(reaching)})" if reaching else "")
    return [rows[k] for k in sorted(rows, key=int)] if all(k.isdigit() for k in rows) else list(rows.values())


def moved_by_reading_the_answer(records: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per method, how many facts' forget rate and paraphrase accuracy differ between reading the
    answer and plain containment (a subject that names the object: Honda Prelude and Honda)."""
    moved: dict[str, dict[str, int]] = {}
    for rec in records:
        if rec.get("error"):
            continue
        m = rec["metrics"]
        entry = moved.setdefault(rec["label"], {"forget": 0, "paraphrase": 0})
        for name, key in (("forget", "forget_rate"), ("paraphrase", "paraphrase_accuracy")):
            if f"{key}_strict" in m and m.get(key) != m[f"{key}_strict"]:
                entry[name] += 1
    return moved


def summarize(config: BenchConfig, model_name: str, selection: Selection, records: Sequence[dict],
              base_ppl: float, dataset_controls: int | None = None) -> dict:
    methods = aggregate(records, config.bootstrap, config.seed)
    befores = [r["before"] for r in {r["key"]: r for r in records if not r.get("error")}.values()]

    def mean(key: str) -> float | None:
        values = [b[key] for b in befores if b.get(key) is not None]
        return float(np.mean(values)) if values else None

    sel = selection.to_dict()
    sel["kept_count"] = len(selection.kept)
    return {
        "model": model_name,
        "data": str(config.data),
        "format": config.fmt,
        "selection": sel,
        "bootstrap": config.bootstrap,
        "base": {"perplexity": base_ppl},
        "before": {"mc_old_first": mean("mc_old_first"), "generation_entropy": mean("generation_entropy"),
                   "neighbourhood_specificity": mean("neighbourhood_specificity")},
        "methods": methods,
        "dataset_controls": dataset_controls,
        "moved_by_reading_the_answer": moved_by_reading_the_answer(records),
        "audits": audit_verdicts(records),
        "software": software_lines(records),
        "config": config.to_dict(),
        "results": str(Path(config.out) / "results.jsonl"),
    }
