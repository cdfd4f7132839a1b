"""The bench run: select facts, edit each on a fresh copy per method, append, summarize."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...core.files import check_output_directory, write_text_atomic
from ...core.reference_cache import ReferenceCache
from ...data.datasets import SPORTS, load_requests
from ...data.facts import Fact, control_facts
from ...data.requests import EditRequest
from ...edit import get_editor
from ...evaluate.fluency import perplexity
from ...evaluate.multiple_choice import ChoiceSet, choice_set, distractors_for
from ...evaluate.snapshots import Snapshot, control_snapshot
from ...localize import LOCALIZERS, localize
from ...models.arch import get_adapter
from ...models.components import Component
from ..pipeline import EditConfig, edit
from .audits import audit_result
from .config import RANDOM_LOCALIZER, BenchConfig, BenchError, Workers
from .measures import dataset_control_retention, fact_measures
from .plan import label_for, plan, random_components, reference_localizer
from .provenance import software
from .results import append_result, read_results
from .selection import Selection, select_dataset_controls, select_facts
from .summary import summarize, write_summary


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


@dataclass
class FactWork:
    """What every method of one fact shares: its localizations, choices and unedited measures."""

    index: int
    request: EditRequest
    choices: ChoiceSet | None = None
    before: dict = field(default_factory=dict)
    components: dict[str, list[Component]] = field(default_factory=dict)  # localizer -> components
    localize_s: dict[str, float] = field(default_factory=dict)
    audit_facts: list | None = None  # the audit's relation facts, found once per fact
    audit_facts_s: float = 0.0


@dataclass
class BenchRun:
    """What every edit of a run reads: the model, the data and the unedited model's baselines."""

    config: BenchConfig
    model: object
    tokenizer: object
    requests: list[EditRequest]
    controls: list[Fact]
    control_baseline: Snapshot
    dataset_facts: list[Fact]
    dataset_baseline: Snapshot
    references: ReferenceCache
    provenance: dict
    out: Path


def run_bench(config: BenchConfig, resume: bool = False, console=None,
              on_record: Callable[[dict], None] | None = None, workers: Workers | None = None) -> dict:
    """`workers`: where the edits run (default: here, one after the other; `Workers(count=N)`: on
    N Ray actors, see distributed.py). The facts, the baselines and results.jsonl are the driver's."""
    from rich.console import Console

    from ...models import load_model

    # First, before anything slow: the checkout may move on while a long run works.
    provenance = software()
    console = console or Console(stderr=True)
    workers = workers or Workers()
    if workers.distributed:
        from .distributed import require_ray

        require_ray(workers.count)
    _check_names(config)
    requests = load_requests(config.data, config.fmt, config.seed)
    controls = _load_controls(config.controls)
    out = Path(config.out)
    check_output_directory(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _check_resume(out, config, resume)
    records = read_results(out / "results.jsonl") if resume else []

    loaded = load_model(config.model, dtype=config.dtype, device=config.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    started = time.perf_counter()
    selection = _selection(model, tokenizer, requests, config, meta, console)
    dataset_indices = _dataset_controls(model, tokenizer, requests, selection, config, meta, console)
    base_ppl = perplexity(model, tokenizer)
    write_text_atomic(out / "bench.json", json.dumps({"config": config.to_dict(), "model": loaded.name,
                                                      "selection": selection.to_dict(),
                                                      "dataset_controls": dataset_indices,
                                                      "base_perplexity": base_ppl}, indent=2) + "\n")
    first = requests[selection.kept[0]]
    dataset_facts = [Fact(requests[i].text, requests[i].old_object) for i in dataset_indices]
    run = BenchRun(config, model, tokenizer, requests, controls,
                   control_snapshot(model, tokenizer, first, controls, config.edit.evaluate), dataset_facts,
                   control_snapshot(model, tokenizer, first, dataset_facts, config.edit.evaluate),
                   ReferenceCache(),  # the sampled prefixes: drawn once for every edit of this model
                   provenance, out)
    name = loaded.name
    if workers.distributed:
        from .distributed import edit_distributed

        del model, loaded  # the workers load their own; the driver's copy would hold its GPU's memory
        edit_distributed(run, selection, records, console, on_record, workers)
    else:
        _edit_all(run, selection, records, console, on_record)
    summary = summarize(config, name, selection, records, base_ppl, len(dataset_indices))
    summary["seconds"] = time.perf_counter() - started
    write_summary(out, summary)
    return summary


def _check_names(config: BenchConfig) -> None:
    for method in config.methods:
        get_editor(method)
    for loc in config.localizers:
        if loc not in LOCALIZERS:
            raise BenchError(f"unknown localizer {loc!r}; available: {', '.join(sorted(LOCALIZERS))}")


def _selection(model, tokenizer, requests, config: BenchConfig, meta: dict | None, console) -> Selection:
    """The facts to edit: those of the run being resumed when it had enough, else selected anew."""
    old = (meta or {}).get("selection")
    if old and (len(old["kept"]) >= config.n or old["scanned"] >= old["total"]):
        selection = Selection(**old)
        selection.kept = selection.kept[: config.n]
    else:
        with console.status("selecting facts the model knows"):
            selection = select_facts(model, tokenizer, requests, config.fmt, config.n, config.keep_unknown,
                                     config.max_scan)
    console.print(f"bench: {len(selection.kept)} facts kept of {selection.scanned} scanned "
                  f"({selection.criterion}); {selection.untokenizable} not expressible by the tokenizer")
    if not selection.kept:
        raise BenchError(f"{config.data}: none of the {selection.scanned} scanned facts passes the filter "
                         f"({selection.criterion}); scan more or pass --keep-unknown")
    return selection


def _edit_all(run: BenchRun, selection: Selection, records: list[dict], console, on_record) -> None:
    """Every (fact, method, localizer) not yet in `records`, each appended as it finishes."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    pairs = plan(run.config.methods, run.config.localizers)
    done = {(r["key"], r["method"], r.get("localizer")) for r in records if not r.get("error")}
    todo = [(i, m, loc) for i in selection.kept for m, loc in pairs if (str(i), m, loc) not in done]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("edits", total=len(todo))
        fact = None
        for index, method, loc in todo:
            if fact is None or fact.index != index:
                fact = _fact_work(run, index)
            bar.update(task, description=f"fact {index} {fact.request.subject[:20]!s}: {label_for(method, loc)}")
            record = _edit_record(run, fact, method, loc, console)
            append_result(run.out / "results.jsonl", record)
            records.append(record)
            if on_record:
                on_record(record)
            bar.advance(task)


def _fact_work(run: BenchRun, index: int) -> FactWork:
    """The per-fact work shared by all methods: multiple-choice options and the unedited measures."""
    request = run.requests[index]
    if run.config.fmt == "sports":
        distractors = [s for s in SPORTS if s not in (request.old_object, request.new_object)]
    else:
        distractors = distractors_for(request, run.requests, 2, run.config.seed)
    choices = choice_set(run.tokenizer, request, distractors)
    before = fact_measures(run.model, run.tokenizer, request, choices, run.config.generation_tokens)
    return FactWork(index, request, choices, before)


def record_head(run: BenchRun, index: int, method: str, loc: str | None) -> dict:
    """The fields of a results.jsonl line that name the edit: the fact, method and software."""
    request = run.requests[index]
    return {"key": str(index), "index": index, "case_id": request.case_id, "subject": request.subject,
            "prompt": request.text, "old": request.old_object, "new": request.new_object,
            "relation": request.relation, "method": method, "localizer": loc, "label": label_for(method, loc),
            "software": run.provenance}


def _edit_record(run: BenchRun, fact: FactWork, method: str, loc: str | None, console) -> dict:
    """One results.jsonl line: the edit's metrics, components, stages and timings, or its error."""
    request, label = fact.request, label_for(method, loc)
    record = record_head(run, fact.index, method, loc)
    try:
        cfg = copy.deepcopy(run.config.edit)
        cfg.method = method
        components = [] if loc is None else _components(run.model, run.tokenizer, request, cfg, loc, fact.index,
                                                        run.config, fact)
        result = edit(run.model, run.tokenizer, request, cfg, controls=run.controls,
                      control_baseline=run.control_baseline, components=components, references=run.references)
        after = fact_measures(result.model, run.tokenizer, request, fact.choices, run.config.generation_tokens)
        metrics = _bench_metrics(run, fact, result, after, loc)
        if run.config.audit:
            record["audit"] = audit_result(run.model, run.tokenizer, request, result, run.requests, run.controls,
                                           run.out / "audits" / f"{fact.index}-{label}.json", fact)
            metrics.update(record["audit"].pop("metrics"))
        record.update({
            "metrics": metrics,
            "components": [c.name for c in components],
            "stages": [s.to_dict() for s in result.outcome.stages],
            "timings": {**result.timings, "localize_s": fact.localize_s.get(loc, 0.0)},
            "before": {k: v for k, v in fact.before.items() if k != "generations"},
            "generations": {"before": fact.before["generations"], "after": after["generations"]},
            "rows": [r.to_dict() for r in result.rows if r.kind != "control"],
        })
    except (ValueError, RuntimeError) as exc:  # one failed edit must not sink the run
        record["error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]fact {fact.index} {method}: {record['error']}[/]")
    return record


def _bench_metrics(run: BenchRun, fact: FactWork, result, after: dict, loc: str | None) -> dict:
    """The edit's metrics with the bench's own: specificity, multiple choice, fluency, the
    dataset's F_control, cost."""
    metrics = dict(result.metrics)
    metrics.update({k: v for k, v in after.items() if k not in ("generations", "mc_old_first")})
    if run.dataset_facts:
        metrics.update(dataset_control_retention(run.model, result.model, run.tokenizer, fact.request,
                                                 run.dataset_facts, run.dataset_baseline, run.config.edit.evaluate))
    metrics["perplexity"] = perplexity(result.model, run.tokenizer)
    metrics["trainable_parameters"] = sum(s.trainable_parameters for s in result.outcome.stages)
    metrics["steps"] = result.outcome.steps
    metrics["seconds"] = result.timings["total_s"] + fact.localize_s.get(loc, 0.0)
    return metrics


def _dataset_controls(model, tokenizer, requests, selection: Selection, config: BenchConfig, meta: dict | None,
                      console) -> list[int]:
    """The indices of the dataset's control facts: those of the run being resumed, else selected."""
    if meta and meta.get("dataset_controls") is not None:
        return meta["dataset_controls"]
    if not config.dataset_controls:
        return []
    with console.status("selecting the dataset's control facts (stated by the model, never edited)"):
        indices = select_dataset_controls(model, tokenizer, requests, selection.kept, selection.scanned,
                                          config.dataset_controls)
    console.print(f"bench: {len(indices)} of the file's other facts the model states measure F_control on the "
                  f"dataset (asked for {config.dataset_controls})")
    return indices


def _components(model, tokenizer, request, cfg: EditConfig, loc: str, index: int, config: BenchConfig,
                fact: FactWork) -> list[Component]:
    """Localize once per fact and localizer; every method of the fact reuses the components.

    `random` is the localization control, not the registered `random` localizer (top_k of seeded
    scores, one draw for every fact): as many components as the run's real localizer
    (plan.reference_localizer) picked for this fact, localized first if it has not run yet, drawn
    uniformly from every layer with a per-fact seed (plan.random_components)."""
    cfg.localize.method = loc
    if loc in fact.components:
        return fact.components[loc]
    if loc == RANDOM_LOCALIZER:
        real = _components(model, tokenizer, request, copy.deepcopy(cfg), reference_localizer(config), index,
                           config, fact)
        tick = time.perf_counter()
        comps = random_components(model, len(real), cfg.localize.kinds, config.seed * 100_003 + index)
    else:
        tick = time.perf_counter()
        result = localize(model, tokenizer, request, cfg.localize)
        comps = result.select_by(cfg.localize, get_adapter(model).num_layers(model))
    fact.components[loc] = comps
    fact.localize_s[loc] = time.perf_counter() - tick
    return comps


def resummarize(out: Path | str) -> dict:
    """Rewrite OUT/summary.{json,md,png} from OUT/results.jsonl and OUT/bench.json alone: no model
    is loaded and nothing is edited (e.g. after a newer circuitedit adds a table)."""
    out = Path(out)
    meta_path = out / "bench.json"
    if not meta_path.exists():
        raise BenchError(f"{meta_path} not found (is {out} a bench output directory?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        saved = dict(meta["config"])
        fields = set(BenchConfig.__dataclass_fields__) - {"edit"}
        config = BenchConfig(**{k: v for k, v in saved.items() if k in fields},
                             edit=EditConfig.from_dict(saved.get("edit", {})))
        selection = Selection(**meta["selection"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"{meta_path}: not written by bench ({exc})") from None
    previous_path = out / "summary.json"
    previous = json.loads(previous_path.read_text(encoding="utf-8")) if previous_path.exists() else {}
    base_ppl = meta.get("base_perplexity", previous.get("base", {}).get("perplexity"))
    records = read_results(out / "results.jsonl")
    if not records:
        raise BenchError(f"{out / 'results.jsonl'}: no results to summarize")
    dataset_controls = meta.get("dataset_controls")
    summary = summarize(config, meta.get("model", config.model), selection, records, base_ppl,
                        None if dataset_controls is None else len(dataset_controls))
    summary["seconds"] = previous.get("seconds")
    write_summary(out, summary)
    return summary
