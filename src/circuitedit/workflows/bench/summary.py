"""Aggregation (means, bootstrap intervals) and OUT/summary.{json,md,png,html}."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...core.files import write_text_atomic
from ...render.bench import bar_chart, summary_markdown
from ...render.html import bench_html
from .config import BenchConfig
from .provenance import software_lines
from .selection import Selection


# Rows of the summary table, in order (rates first, then costs).
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


SPEED_BASELINE = "unlearn-then-learn"


def speed_against_baseline(records: Sequence[dict], baseline: str = SPEED_BASELINE) -> dict[str, float]:
    """Per method, the median over facts of (the baseline's seconds / its seconds) on the same
    fact in this run: how many times faster than `baseline`, robust to a stall on a shared CPU."""
    seconds: dict[str, dict[str, float]] = {}
    for rec in records:
        if not rec.get("error") and rec["metrics"].get("seconds"):
            seconds.setdefault(rec["label"], {})[rec["key"]] = rec["metrics"]["seconds"]
    reference = seconds.get(baseline, {})
    ratios = {label: [reference[k] / v for k, v in per_fact.items() if k in reference]
              for label, per_fact in seconds.items()}
    return {label: float(np.median(values)) for label, values in ratios.items() if values}


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
        "times_faster_than_" + SPEED_BASELINE.replace("-", "_"): speed_against_baseline(records),
        "audits": audit_verdicts(records),
        "software": software_lines(records),
        "config": config.to_dict(),
        "results": str(Path(config.out) / "results.jsonl"),
    }
