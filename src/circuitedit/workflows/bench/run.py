"""The bench run: select facts, edit each on a fresh copy per method, append, summarize."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

from ...core.files import check_output_directory, write_text_atomic
from ...core.reference_cache import ReferenceCache
from ...data.datasets import SPORTS, load_requests
from ...data.facts import Fact, control_facts
from ...edit import get_editor
from ...evaluate.fluency import perplexity
from ...evaluate.multiple_choice import choice_set, distractors_for
from ...evaluate.snapshots import control_snapshot
from ...localize import LOCALIZERS, localize
from ...models.arch import get_adapter
from ...models.components import Component
from ..pipeline import EditConfig, edit
from .audits import audit_result
from .config import RANDOM_LOCALIZER, BenchConfig, BenchError
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

    from ...models import load_model

    # First, before anything slow: the checkout may move on while a long run works.
    provenance = software()
    console = console or Console(stderr=True)
    for method in config.methods:
        get_editor(method)
    for loc in config.localizers:
        if loc not in LOCALIZERS:
            raise BenchError(f"unknown localizer {loc!r}; available: {', '.join(sorted(LOCALIZERS))}")
    requests = load_requests(config.data, config.fmt, config.seed)
    controls = _load_controls(config.controls)
    out = Path(config.out)
    check_output_directory(out)
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
    console.print(f"bench: {len(selection.kept)} facts kept of {selection.scanned} scanned "
                  f"({selection.criterion}); {selection.untokenizable} not expressible by the tokenizer")
    if not selection.kept:
        raise BenchError(f"{config.data}: none of the {selection.scanned} scanned facts passes the filter "
                         f"({selection.criterion}); scan more or pass --keep-unknown")

    dataset_indices = _dataset_controls(model, tokenizer, requests, selection, config, meta, console)
    base_ppl = perplexity(model, tokenizer)
    write_text_atomic(out / "bench.json", json.dumps({"config": config.to_dict(), "model": loaded.name,
                                                      "selection": selection.to_dict(),
                                                      "dataset_controls": dataset_indices,
                                                      "base_perplexity": base_ppl}, indent=2) + "\n")
    control_baseline = control_snapshot(model, tokenizer, requests[selection.kept[0]], controls, config.edit.evaluate)
    dataset_facts = [Fact(requests[i].text, requests[i].old_object) for i in dataset_indices]
    dataset_baseline = control_snapshot(model, tokenizer, requests[selection.kept[0]], dataset_facts,
                                        config.edit.evaluate)
    # The sampled prefixes are the same for every edit of this model: drawn once, not per edit.
    references = ReferenceCache()

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
                      "label": label_for(method, loc), "software": provenance}
            try:
                cfg = copy.deepcopy(config.edit)
                cfg.method = method
                components = [] if loc is None else _components(model, tokenizer, request, cfg, loc, index,
                                                                config, per_fact)
                result = edit(model, tokenizer, request, cfg, controls=controls,
                              control_baseline=control_baseline, components=components, references=references)
                after = fact_measures(result.model, tokenizer, request, per_fact["choices"],
                                      config.generation_tokens)
                metrics = dict(result.metrics)
                metrics.update({k: v for k, v in after.items() if k not in ("generations", "mc_old_first")})
                if dataset_facts:
                    metrics.update(dataset_control_retention(model, result.model, tokenizer, request, dataset_facts,
                                                             dataset_baseline, config.edit.evaluate))
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

    summary = summarize(config, loaded.name, selection, records, base_ppl, len(dataset_indices))
    summary["seconds"] = time.perf_counter() - started
    write_summary(out, summary)
    return summary


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
                per_fact: dict) -> list[Component]:
    """Localize once per fact and localizer; every method of the fact reuses the components.

    `random` is the localization control, not the registered `random` localizer (top_k of seeded
    scores, one draw for every fact): as many components as the run's real localizer
    (plan.reference_localizer) picked for this fact, localized first if it has not run yet, drawn
    uniformly from every layer with a per-fact seed (plan.random_components)."""
    cfg.localize.method = loc
    if loc in per_fact["components"]:
        return per_fact["components"][loc]
    if loc == RANDOM_LOCALIZER:
        real = _components(model, tokenizer, request, copy.deepcopy(cfg), reference_localizer(config), index,
                           config, per_fact)
        tick = time.perf_counter()
        comps = random_components(model, len(real), cfg.localize.kinds, config.seed * 100_003 + index)
    else:
        tick = time.perf_counter()
        result = localize(model, tokenizer, request, cfg.localize)
        comps = result.select_by(cfg.localize, get_adapter(model).num_layers(model))
    per_fact["components"][loc] = comps
    per_fact["localize_s"][loc] = time.perf_counter() - tick
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
