"""The multiple-choice probe of the audit: old, new object and distractors, every rotation asked.

Distractors, in order: the latent probe's candidate objects (other facts of the relation), the
request's neighbourhood answers, then `pool` (e.g. a data set's objects of the same relation);
never the old or the new object, deduplicated case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..data.requests import EditRequest
from ..evaluate.multiple_choice import choice_set, multiple_choice_scores
from .status import measured, skipped

NO_DISTRACTORS = ("no distractor objects: the relation has no other facts, the request no neighbourhood "
                  "answers and no data-set objects of the relation were given")
NO_LETTERS = "the tokenizer cannot write the option letters"


def pick_distractors(request: EditRequest, candidates: Iterable[str], pool: Iterable[str] | None = None,
                     count: int = 2) -> list[str]:
    taken = {request.old_object.casefold(), request.new_object.casefold()}
    out = []
    for obj in [*candidates, *(n["answer"] for n in request.neighbourhood), *(pool or ())]:
        obj = (obj or "").strip()
        if obj and obj.casefold() not in taken:
            taken.add(obj.casefold())
            out.append(obj)
    return out[:count]


def multiple_choice_report(models: dict[str, nn.Module], tokenizer, request: EditRequest,
                           distractors: list[str]) -> dict:
    """{"status": "measured", "options", "models": {name: scores}} or skipped with the reason."""
    if not distractors:
        return skipped(NO_DISTRACTORS)
    choices = choice_set(tokenizer, request, distractors)
    scores = {name: multiple_choice_scores(model, tokenizer, choices) for name, model in models.items()}
    if any(s is None for s in scores.values()):
        return skipped(NO_LETTERS)
    return measured(options=choices.options, models=scores)


def summary(report: dict) -> dict:
    """The report without per-model scores (those go into each section's rows)."""
    return {k: v for k, v in report.items() if k != "models"}
