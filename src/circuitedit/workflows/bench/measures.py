"""Measures bench adds to the edit metrics: CounterFact specificity, multiple choice, fluency."""

from __future__ import annotations

from ...core.forward import object_logprobs
from ...core.tokens import TargetTokenizationError
from ...data.facts import Fact, controls_for
from ...data.requests import EditRequest
from ...evaluate.fluency import generation_entropy, generation_prompts
from ...evaluate.metrics import retained_share
from ...evaluate.multiple_choice import multiple_choice_scores
from ...evaluate.snapshots import EvalConfig, Snapshot, control_snapshot
from ..pipeline import in_dtypes_of


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



def dataset_control_retention(base_model, edited_model, tokenizer, request: EditRequest, facts: list[Fact],
                              baseline: Snapshot, config: EvalConfig) -> dict:
    """F_control over the dataset's own control facts (none about the edited subject): the
    edited model against `baseline`, or against the base model in the edited model's dtypes
    when an editor upcast what it trained."""
    after = control_snapshot(edited_model, tokenizer, request, facts, config)
    matched = in_dtypes_of(base_model, edited_model)
    before = baseline if matched is None else control_snapshot(matched, tokenizer, request, facts, config)
    share, stated = retained_share(controls_for(request, facts), before, after)
    return {"f_control_dataset": share, "dataset_controls_stated": stated}
