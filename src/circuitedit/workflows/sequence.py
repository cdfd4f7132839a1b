"""Many edits into one model: `run_sequence` applies requests one after another (or in batches
of B, each batch one update with `together`) to the same model, records each edit in an
`EditHistory` and re-measures every fact edited so far after each batch; `revert` takes one
edit out again and measures that its fact is answered as before and the others still hold."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from ..core.generate import greedy_continuations
from ..data.facts import Fact, control_facts
from ..data.requests import EditRequest
from ..edit.base import KeyMemory
from ..evaluate.sequence import fact_scores, sequence_measures, unedited_references
from .history import EditHistory, HistoryError
from .outputs import undone_stage
from .pipeline import EditConfig, edit
from .together import check_distinct, edit_together


def pending_requests(history: EditHistory, requests: Sequence[EditRequest]) -> list[EditRequest]:
    """The requests the history does not hold yet (a resumed run skips those it made); one that
    rewrites a fact the history already rewrote differently is refused."""
    check_distinct(requests)
    pending = []
    for request in requests:
        held = history.holding(request)
        if held is None:
            pending.append(request)
        elif held.to_dict() != request.to_dict():
            raise HistoryError(f"{history.root}: {request.subject!r} ({request.relation or request.prompt!r}) is "
                               f"already edited in this history (to {held.new_object!r}); revert that edit first")
    return pending


def run_sequence(base: nn.Module, tokenizer, requests: Sequence[EditRequest], history: EditHistory,
                 config: EditConfig | None = None, *, batch_size: int = 1, together: bool = False,
                 controls: list[Fact] | None = None, software: dict | None = None,
                 on_batch: Callable[[dict], None] | None = None) -> EditHistory:
    """Edit `requests` into one model in batches of `batch_size` (each request its own edit, or
    with `together` each batch one update), recording each edit in `history` and, after each
    batch, `sequence_measures` of every fact edited so far (`on_batch` gets them). Resumable:
    the requests `history` already holds are skipped and its model is rebuilt from the files.
    The key-value editors key every edit on the unedited model's statistics (computed once), and
    AlphaEdit keeps the keys of the earlier edits (`EditHistory.previous_keys`)."""
    config = config or EditConfig()
    config.validate()
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    pending = pending_requests(history, requests)
    if not pending:
        return history
    controls = control_facts() if controls is None else controls
    base_controls, base_entropy = unedited_references(base, tokenizer, pending[0], controls, config.evaluate)
    current = history.edited_model(base)
    for start in range(0, len(pending), batch_size):
        batch = pending[start:start + batch_size]
        earlier = len(history.requests())
        tick = time.perf_counter()
        if together:
            results = edit_together(current, tokenizer, batch, config, controls=controls,
                                    memory=KeyMemory(base, history.previous_keys()))
            history.append(config.method, results, software or {})
            current = results[0].model
        else:
            for request in batch:
                result = edit(current, tokenizer, request, config, controls=controls,
                              memory=KeyMemory(base, history.previous_keys()))
                history.append(config.method, [result], software or {})
                current = result.model
        edit_seconds = time.perf_counter() - tick
        measures = sequence_measures(current, tokenizer, history.requests(), earlier, controls, base_controls,
                                     base_entropy, config.evaluate)
        measures.update(batch_edits=len(batch), batch_edit_seconds=edit_seconds,
                        measure_seconds=time.perf_counter() - tick - edit_seconds)
        history.checkpoints.append(measures)
        history.save()
        if on_batch:
            on_batch(measures)
    return history


@dataclass
class RevertReport:
    edit_id: int
    how: str
    # |undone in place − rebuilt without the edit| over every parameter: fp32 rounding, or one
    # rounding step of a bf16 model's weights
    max_weight_difference: float
    answered_as_unedited: float  # share of the edit's prompts answered as the unedited model answered them
    others_still_stated: float | None  # share of the other edits' new objects still stated

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def max_difference(first: nn.Module, second: nn.Module) -> float:
    params = dict(second.named_parameters())
    return max(float((p.float() - params[n].float()).abs().max()) for n, p in first.named_parameters())


def revert(history: EditHistory, base: nn.Module, tokenizer, edit_id: int, config: EditConfig | None = None) -> RevertReport:
    """Take edit `edit_id` out: its stages undone in place on the edited model (a weight delta
    subtracted, an IA3 scaling divided out), checked against the model rebuilt from the base
    without it; then its prompts answered as the unedited model answered them and the others'
    facts measured. The history keeps it under "reverted"."""
    config = config or EditConfig()
    entry = history.find(edit_id)
    undone = history.edited_model(base)
    for stage in reversed(entry.stages):
        undone = undone_stage(undone, history.root / entry.directory / "adapters" / stage)
    rebuilt = history.edited_model(base, without=edit_id)
    prompts = [r.text for r in entry.requests]
    tokens = config.evaluate.max_new_tokens
    same = [a == b for a, b in zip(greedy_continuations(base, tokenizer, prompts, tokens),
                                    greedy_continuations(rebuilt, tokenizer, prompts, tokens), strict=True)]
    others = [r for e in history.entries if e.id != edit_id for r in e.requests]
    scores = fact_scores(rebuilt, tokenizer, others, config.evaluate) if others else []
    report = RevertReport(edit_id, "exact: its stages taken out (weight deltas subtracted, IA3 scalings divided out)",
                          max_difference(undone, rebuilt), sum(same) / len(same),
                          sum(s["stated"] for s in scores) / len(scores) if scores else None)
    history.entries.remove(entry)
    history.reverted.append({"id": edit_id, "requests": [r.to_dict() for r in entry.requests], **report.to_dict()})
    history.save()
    return report

