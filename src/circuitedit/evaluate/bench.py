"""`circuitedit bench`: many single edits, every method, one table with confidence intervals.

Protocol: facts are taken in file order and kept only if the unedited model knows them (its
greedy continuation contains the true object; for Sports Facts the true sport ranks first of
the three). Each kept fact is edited on a fresh copy of the base model by every method (single-
edit protocol), measured, and appended to OUT/results.jsonl at once (one flushed line per
finished edit), so `--resume` redoes nothing that finished. OUT/summary.{json,md} hold each
method's mean and 95% bootstrap interval per metric, OUT/summary.png a bar chart.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..edit import get_editor
from ..localize import LOCALIZERS, localize
from ..models.arch import get_adapter
from ..models.components import HEAD, MLP, Component
from ..pipeline import EditConfig, check_request, edit
from ..requests import EditRequest
from .datasets import SPORTS, load_requests
from .facts import Fact, control_facts, controls_for
from .fluency import generation_entropy, generation_prompts, perplexity
from .multiple_choice import choice_set, distractors_for, multiple_choice_scores
from .runner import Probe, take_snapshot
from .scoring import TargetTokenizationError, contains_object, greedy_continuations, object_logprobs

DEFAULT_METHODS = ("none", "unlearn-then-learn", "learn-only", "ia3-all-layers", "ft-full", "ft-localized",
                   "lora-localized")
DEFAULT_LOCALIZER = "attribution"
RANDOM_LOCALIZER = "random"

# Rows of the summary table, in order (rates first, then costs).
SUMMARY_METRICS = {
    "new_fact_accuracy": "new-fact accuracy",
    "paraphrase_accuracy": "unseen-paraphrase accuracy",
    "paraphrase_accuracy_stated": "unseen paraphrases where the old fact was stated",
    "forget_rate": "forget rate",
    "forget_rate_stated": "forget rate where the old fact was stated",
    "f_control": "F_control",
    "neighbourhood_accuracy": "neighbourhood accuracy",
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


class BenchError(ValueError):
    pass


@dataclass
class BenchConfig:
    data: str
    fmt: str = "counterfact-rome"
    out: str = "bench"
    n: int = 20
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    localizers: list[str] = field(default_factory=lambda: [DEFAULT_LOCALIZER])
    model: str | None = None
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    keep_unknown: bool = False  # skip the knows-the-fact filter (tiny test models know nothing)
    max_scan: int | None = None  # stop scanning for known facts after this many records
    controls: str | None = None  # JSONL of control facts (default: the built-in set)
    bootstrap: int = 1000
    generation_tokens: int = 40  # length of the greedy generations whose n-gram entropy is fluency
    audit: bool = False  # audit every edit (latent probes, indirect prompts, relearning): a verdict each
    edit: EditConfig = field(default_factory=EditConfig)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["edit"] = self.edit.to_dict()
        return data


# ---- fact selection --------------------------------------------------------------------------

@dataclass
class Selection:
    kept: list[int]  # record indices, in file order
    scanned: int
    total: int
    untokenizable: int = 0
    criterion: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def knows(model, tokenizer, requests: Sequence[EditRequest], fmt: str, max_new_tokens: int = 10) -> list[bool]:
    """Whether the unedited model knows each fact (see the module docstring for the criterion)."""
    if fmt == "sports":
        prompts = [r.text for r in requests for _ in SPORTS]
        objects = [s for _ in requests for s in SPORTS]
        scores = object_logprobs(model, tokenizer, prompts, objects).view(len(requests), len(SPORTS))
        return [SPORTS[int(row.argmax())] == r.old_object for row, r in zip(scores, requests, strict=True)]
    texts = greedy_continuations(model, tokenizer, [r.text for r in requests], max_new_tokens)
    return [contains_object(t, r.old_object) for t, r in zip(texts, requests, strict=True)]


def select_facts(model, tokenizer, requests: Sequence[EditRequest], fmt: str, n: int, keep_unknown: bool = False,
                 max_scan: int | None = None, batch_size: int = 32) -> Selection:
    criterion = ("none (--keep-unknown)" if keep_unknown else
                 "true sport ranks first of the three" if fmt == "sports" else
                 "greedy continuation contains the true object")
    selection = Selection([], 0, len(requests), criterion=criterion)
    limit = len(requests) if max_scan is None else min(max_scan, len(requests))
    index = 0
    while index < limit and len(selection.kept) < n:
        chunk = []
        while index < limit and len(chunk) < (1 if keep_unknown else batch_size):
            try:
                check_request(tokenizer, requests[index])
                chunk.append(index)
            except TargetTokenizationError:
                selection.untokenizable += 1
            index += 1
        verdicts = [True] * len(chunk) if keep_unknown else knows(model, tokenizer, [requests[i] for i in chunk], fmt)
        for i, ok in zip(chunk, verdicts, strict=True):
            if len(selection.kept) >= n:
                break
            selection.scanned = i + 1
            if ok:
                selection.kept.append(i)
        if not chunk:
            selection.scanned = index
    return selection


# ---- results file ----------------------------------------------------------------------------

def read_results(path: Path) -> list[dict]:
    """Finished results; a truncated last line (interrupted mid-write) is dropped from the file."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records, good = [], 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            good += len(line.encode("utf-8"))
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):  # the interrupted last write
                with path.open("r+", encoding="utf-8") as handle:
                    handle.truncate(good)
                break
            raise BenchError(f"{path}: line {lineno}: invalid JSON (not written by bench?)") from None
        good += len(line.encode("utf-8"))
    return records


def append_result(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---- metrics beyond metrics.py -----------------------------------------------------------------

def neighbourhood_specificity(model, tokenizer, request: EditRequest) -> float | None:
    """CounterFact's NS: share of neighbourhood prompts where P(true answer) > P(new object)."""
    if not request.neighbourhood:
        return None
    prompts = [n["prompt"] for n in request.neighbourhood]
    try:
        true = object_logprobs(model, tokenizer, prompts, [n["answer"] for n in request.neighbourhood])
        new = object_logprobs(model, tokenizer, prompts, [request.new_object] * len(prompts))
    except TargetTokenizationError:
        return None
    return float((true > new).float().mean())


def fact_measures(model, tokenizer, request: EditRequest, choices, generation_tokens: int = 40) -> dict:
    """The measures bench adds to metrics.py's, for one model (before or after an edit)."""
    entropy, texts = generation_entropy(model, tokenizer, generation_prompts(request), generation_tokens)
    mc = multiple_choice_scores(model, tokenizer, choices) if choices else None
    return {
        "neighbourhood_specificity": neighbourhood_specificity(model, tokenizer, request),
        "mc_new_first": mc["new_first"] if mc else None,
        "mc_old_gone": 1.0 - mc["old_first"] if mc else None,
        "mc_old_first": mc["old_first"] if mc else None,
        "generation_entropy": entropy,
        "generations": texts,
    }


# ---- localization controls -------------------------------------------------------------------

def random_components(model, count: int, kinds: str, seed: int) -> list[Component]:
    """`count` components drawn uniformly (seeded) from every layer: the localization control."""
    allowed = {"both": (HEAD, MLP), "heads": (HEAD,), "mlps": (MLP,)}[kinds]
    pool = [c for c in get_adapter(model).all_layer_components(model) if c.kind in allowed]
    return sorted(random.Random(seed).sample(pool, min(count, len(pool))))


def uses_localization(method: str) -> bool:
    return getattr(get_editor(method), "uses_localization", True)


def label_for(method: str, localizer: str | None) -> str:
    if localizer is None or localizer == DEFAULT_LOCALIZER:
        return method
    return f"{method}+{localizer}"


def plan(methods: Sequence[str], localizers: Sequence[str]) -> list[tuple[str, str | None]]:
    """(method, localizer) pairs; methods that ignore localization run once, localizer None."""
    pairs = []
    for method in methods:
        if uses_localization(method):
            pairs += [(method, loc) for loc in localizers]
        else:
            pairs.append((method, None))
    return pairs


# ---- aggregation -----------------------------------------------------------------------------

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
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    bar_chart(summary, out / "summary.png")


# ---- the run ---------------------------------------------------------------------------------

def _load_controls(path: str | None) -> list[Fact]:
    if not path:
        return control_facts()
    facts = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            facts.append(Fact(prompt=data["prompt"], answer=data["answer"], relation=data.get("relation", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BenchError(f"{path}: line {lineno}: not a control fact ({exc})") from None
    if not facts:
        raise BenchError(f"{path}: no control facts")
    return facts


def _check_resume(out: Path, config: BenchConfig, resume: bool) -> dict | None:
    meta_path, results = out / "bench.json", out / "results.jsonl"
    if not resume:
        if results.exists() and results.stat().st_size:
            raise BenchError(f"{out}: holds results from an earlier run; pass --resume or another --out")
        return None
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    old = meta.get("config", {})
    for name in ("data", "fmt", "model", "seed", "keep_unknown", "edit"):
        if old.get(name) != config.to_dict()[name]:
            raise BenchError(f"{out}: --resume with a different {name} than the run there "
                             f"({old.get(name)!r}); use another --out")
    return meta


def run_bench(config: BenchConfig, resume: bool = False, console=None,
              on_record: Callable[[dict], None] | None = None) -> dict:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..models import load_model

    console = console or Console(stderr=True)
    for method in config.methods:
        get_editor(method)
    for loc in config.localizers:
        if loc != RANDOM_LOCALIZER and loc not in LOCALIZERS:
            raise BenchError(f"unknown localizer {loc!r}; available: {', '.join(sorted([*LOCALIZERS, RANDOM_LOCALIZER]))}")
    requests = load_requests(config.data, config.fmt, config.seed)
    controls = _load_controls(config.controls)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _check_resume(out, config, resume)
    results_path = out / "results.jsonl"
    records = read_results(results_path) if resume else []

    loaded = load_model(config.model, dtype=config.dtype, device=config.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    started = time.perf_counter()

    old_sel = (meta or {}).get("selection")
    if old_sel and (len(old_sel["kept"]) >= config.n or old_sel["scanned"] >= old_sel["total"]):
        selection = Selection(**old_sel)
        selection.kept = selection.kept[: config.n]
    else:
        with console.status("selecting facts the model knows"):
            selection = select_facts(model, tokenizer, requests, config.fmt, config.n, config.keep_unknown,
                                     config.max_scan)
    (out / "bench.json").write_text(json.dumps({"config": config.to_dict(), "model": loaded.name,
                                                "selection": selection.to_dict()}, indent=2) + "\n")
    console.print(f"bench: {len(selection.kept)} facts kept of {selection.scanned} scanned "
                  f"({selection.criterion}); {selection.untokenizable} not expressible by the tokenizer")
    if not selection.kept:
        raise BenchError(f"{config.data}: none of the {selection.scanned} scanned facts passes the filter "
                         f"({selection.criterion}); scan more or pass --keep-unknown")

    base_ppl = perplexity(model, tokenizer)
    control_probes = [Probe("control", f.prompt, f.answer) for f in controls]
    control_baseline = take_snapshot(model, tokenizer, requests[selection.kept[0]], control_probes,
                                     config.edit.evaluate, kinds={"control"}, margins=True)

    pairs = plan(config.methods, config.localizers)
    done = {(r["key"], r["method"], r.get("localizer")) for r in records if not r.get("error")}
    todo = [(i, m, loc) for i in selection.kept for m, loc in pairs if (str(i), m, loc) not in done]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("edits", total=len(todo))
        current, per_fact = None, {}
        for index, method, loc in todo:
            request = requests[index]
            if index != current:  # per-fact work shared by all methods
                current = index
                per_fact = {"components": {}, "localize_s": {}}
                distractors = ([s for s in SPORTS if s not in (request.old_object, request.new_object)]
                               if config.fmt == "sports" else distractors_for(request, requests, 2, config.seed))
                per_fact["choices"] = choice_set(tokenizer, request, distractors)
                per_fact["before"] = fact_measures(model, tokenizer, request, per_fact["choices"],
                                                   config.generation_tokens)
            bar.update(task, description=f"fact {index} {request.subject[:20]!s}: {label_for(method, loc)}")
            record = {"key": str(index), "index": index, "case_id": request.case_id, "subject": request.subject,
                      "prompt": request.text, "old": request.old_object, "new": request.new_object,
                      "relation": request.relation, "method": method, "localizer": loc,
                      "label": label_for(method, loc)}
            try:
                cfg = copy.deepcopy(config.edit)
                cfg.method = method
                components = [] if loc is None else _components(model, tokenizer, request, cfg, loc, index,
                                                                config, per_fact)
                result = edit(model, tokenizer, request, cfg, controls=controls_for(request, controls),
                              control_baseline=control_baseline, components=components)
                after = fact_measures(result.model, tokenizer, request, per_fact["choices"],
                                      config.generation_tokens)
                metrics = dict(result.metrics)
                metrics.update({k: v for k, v in after.items() if k not in ("generations", "mc_old_first")})
                metrics["perplexity"] = perplexity(result.model, tokenizer)
                metrics["trainable_parameters"] = sum(s.trainable_parameters for s in result.outcome.stages)
                metrics["steps"] = result.outcome.steps
                metrics["seconds"] = result.timings["total_s"] + per_fact["localize_s"].get(loc, 0.0)
                if config.audit:
                    record["audit"] = audit_result(model, tokenizer, request, result, requests, controls,
                                                   out / "audits" / f"{index}-{record['label']}.json", per_fact)
                    metrics.update(record["audit"].pop("metrics"))
                record.update({
                    "metrics": metrics,
                    "components": [c.name for c in components],
                    "stages": [s.to_dict() for s in result.outcome.stages],
                    "timings": {**result.timings, "localize_s": per_fact["localize_s"].get(loc, 0.0)},
                    "before": {k: v for k, v in per_fact["before"].items() if k != "generations"},
                    "generations": {"before": per_fact["before"]["generations"], "after": after["generations"]},
                    "rows": [r.to_dict() for r in result.rows if r.kind != "control"],
                })
                del result
            except (ValueError, RuntimeError) as exc:  # one failed edit must not sink the run
                record["error"] = f"{type(exc).__name__}: {exc}"
                console.print(f"[red]fact {index} {method}: {record['error']}[/]")
            append_result(results_path, record)
            records.append(record)
            if on_record:
                on_record(record)
            bar.advance(task)

    summary = summarize(config, loaded.name, selection, records, base_ppl)
    summary["seconds"] = time.perf_counter() - started
    write_summary(out, summary)
    return summary


REACH_KEYS = {"logit lens": "reach_logit_lens", "linear probe": "reach_linear_probe",
              "indirect prompts": "reach_indirect_prompts", "formats": "reach_formats", "relearning": "reach_relearning"}


def audit_result(model, tokenizer, request: EditRequest, result, requests: Sequence[EditRequest],
                 controls: Sequence[Fact], path: Path, per_fact: dict, max_relation_facts: int = 48) -> dict:
    """Audit one bench edit; the full audit goes to `path`, the verdict and 0/1 metrics into the record.

    Probe and relearning facts: the data set's other facts of the relation (never the edited
    one; the audit drops anything naming the subject) plus the built-in controls, found once per
    fact (in `per_fact`) for all its methods."""
    from ..audit import AuditConfig, audit_edit, relation_facts, stage_models

    config = AuditConfig()
    if "audit_facts" not in per_fact:
        same = [Fact(r.text, r.old_object, r.relation) for r in requests
                if r.relation == request.relation and r.subject != request.subject][:max_relation_facts]
        tick = time.perf_counter()
        per_fact["audit_facts"] = relation_facts(model, tokenizer, request, config, [*controls, *same])
        per_fact["audit_facts_s"] = time.perf_counter() - tick
    stage1, stage2 = stage_models(model, result)
    report = audit_edit(model, tokenizer, request, stage1, stage2, config, relation=per_fact["audit_facts"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report.to_dict(), default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    label = report.verdict["label"]
    reached = {key: float(any(name.startswith(prefix) for name in report.verdict["reaching"]))
               for prefix, key in REACH_KEYS.items()}
    metrics = {"not_forgotten": float(label == "not forgotten"), "soft_forgetting": float(label == "soft forgetting"),
               "hard_forgetting": float(label == "hard forgetting"), **reached,
               "audit_seconds": report.timings["total_s"] + per_fact["audit_facts_s"]}  # shared cost counted each time
    return {"verdict": label, "reaching": report.verdict["reaching"], "file": str(path), "metrics": metrics}


def _components(model, tokenizer, request, cfg: EditConfig, loc: str, index: int, config: BenchConfig,
                per_fact: dict) -> list[Component]:
    """Localize once per fact and localizer; every method of the fact reuses the components."""
    if loc in per_fact["components"]:
        return per_fact["components"][loc]
    tick = time.perf_counter()
    if loc == RANDOM_LOCALIZER and loc not in LOCALIZERS:
        real = [c for name, c in per_fact["components"].items() if name != RANDOM_LOCALIZER]
        count = len(real[0]) if real else cfg.localize.top_k
        comps = random_components(model, count, cfg.localize.kinds, config.seed * 100_003 + index)
    else:
        cfg.localize.method = loc
        result = localize(model, tokenizer, request, cfg.localize)
        comps = result.select_by(cfg.localize, get_adapter(model).num_layers(model))
    per_fact["components"][loc] = comps
    per_fact["localize_s"][loc] = time.perf_counter() - tick
    return comps


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


def summarize(config: BenchConfig, model_name: str, selection: Selection, records: Sequence[dict],
              base_ppl: float) -> dict:
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
        "audits": audit_verdicts(records),
        "config": config.to_dict(),
        "results": str(Path(config.out) / "results.jsonl"),
    }
