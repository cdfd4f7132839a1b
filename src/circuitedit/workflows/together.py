"""`edit_together()`: many facts written into one copy of a model in one update (MEMIT's and
AlphaEdit's mass edit; the IA3 editors trained on the union of the facts' components with all
their prompts), each fact measured against the unedited model as `edit()` measures one."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import nn

from ..core.prompt_scan import PromptScan
from ..core.reference_cache import ReferenceCache
from ..core.timing import Timings
from ..data.facts import Fact, control_facts, controls_for, retain_prompts
from ..data.requests import EditRequest
from ..edit import RetainSet, TrainingContext
from ..edit.base import KeyMemory, freeze, get_batch_editor, uses_retain
from ..evaluate.metrics import edit_metrics, probe_rows
from ..evaluate.snapshots import cached_control_snapshot, control_snapshot, probes_for
from ..models.arch import get_adapter
from .pipeline import (
    EditConfig,
    EditResult,
    build_context,
    check_request,
    localized_components,
    measure,
    preloads_template_scan,
    template_scan,
)

# The neighbours every training step holds at most (the rest rotate): with many facts, pinning
# each fact's neighbours would make every step as long as all of them.
MAX_PINNED = 16


def fact_key(request: EditRequest) -> tuple[str, str]:
    """What two requests may not share in one batch or history: the subject and the relation
    (the edit prompt when the request names no relation)."""
    return request.subject.casefold(), (request.relation or request.prompt).casefold()


def check_distinct(requests: Sequence[EditRequest], what: str = "--requests") -> None:
    """A ValueError naming the first two requests that rewrite the same subject and relation."""
    seen: dict[tuple[str, str], int] = {}
    for index, request in enumerate(requests):
        key = fact_key(request)
        if key in seen:
            raise ValueError(f"{what}: requests {seen[key] + 1} and {index + 1} both rewrite {request.subject!r} "
                             f"({request.relation or request.prompt!r}); give one per subject and relation")
        seen[key] = index


def joined_context(model: nn.Module, tokenizer, requests: Sequence[EditRequest], config: EditConfig, scans,
                   references) -> TrainingContext:
    """Every request's training prompts in one context, with one retain set over all their
    template neighbours (the first `MAX_PINNED` pinned) and the built-in retain prompts."""
    contexts = [build_context(model, tokenizer, r, config.editor, references, scan, with_retain=False)
                for r, scan in zip(requests, scans, strict=True)]
    if not uses_retain(config.method):
        return TrainingContext.joined(contexts, None)
    neighbours = list(dict.fromkeys(p for c in contexts for p in c.retain_prompts or []))
    retain = RetainSet.from_model(model, tokenizer, neighbours + retain_prompts(),
                                  pinned=min(len(neighbours), MAX_PINNED))
    return TrainingContext.joined(contexts, retain)


def edit_together(model: nn.Module, tokenizer, requests: Sequence[EditRequest], config: EditConfig | None = None,
                  *, controls: list[Fact] | None = None, references: ReferenceCache | None = None,
                  progress: Callable | None = None, memory: KeyMemory | None = None) -> list[EditResult]:
    """Write every request into one copy of `model` with the method's batch form; one
    EditResult per request, all sharing the edited model and the update. memory: as `edit`'s."""
    config = config or EditConfig()
    config.validate()
    batch_editor = get_batch_editor(config.method)
    if not requests:
        raise ValueError("edit --together: no requests")
    check_distinct(requests)
    timings = Timings()
    with timings.phase("total"):
        for request in requests:
            check_request(tokenizer, request)
        get_adapter(model)
        bound = references.for_model(model) if references is not None else None
        controls = control_facts() if controls is None else controls
        with timings.phase("evaluate_before"):
            baseline = cached_control_snapshot(bound, model, tokenizer, requests[0], controls, config.evaluate)
            probes = [probes_for(r, controls_for(r, controls), tokenizer) for r in requests]
            befores = [measure(model, tokenizer, r, p, controls, config.evaluate, baseline)
                       for r, p in zip(requests, probes, strict=True)]
        with timings.phase("localize"):
            scans = [template_scan(model, tokenizer, r, bound) if preloads_template_scan(config)
                     else PromptScan(model, tokenizer) for r in requests]
            located = [localized_components(model, tokenizer, r, config, scan, None)
                       for r, scan in zip(requests, scans, strict=True)]
        with timings.phase("prepare"):
            context = joined_context(model, tokenizer, requests, config, scans, bound)
            context.memory = memory
            working = copy.deepcopy(model)
            freeze(working)
        with timings.phase("train"):
            outcome = batch_editor(working, tokenizer, list(requests), [c for _, c in located], context,
                                   config.editor, progress)
            outcome.model.eval()
        timings.update({f"{stage.name}_s": stage.seconds for stage in outcome.stages})
        with timings.phase("evaluate_after"):
            after_controls = control_snapshot(outcome.model, tokenizer, requests[0], controls, config.evaluate)
            afters = [measure(outcome.model, tokenizer, r, p, controls, config.evaluate, after_controls)
                      for r, p in zip(requests, probes, strict=True)]
    results = []
    for request, probe, before, after, (localization, components) in zip(
            requests, probes, befores, afters, located, strict=True):
        rows = probe_rows(request, probe, before, after, config.evaluate.known_margin)
        results.append(EditResult(request, outcome.model, list(components), localization, outcome, rows,
                                  edit_metrics(request, rows, before, after), dict(timings), config))
    return results

