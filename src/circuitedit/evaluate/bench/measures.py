"""Measures bench adds to the edit metrics: CounterFact specificity, multiple choice, fluency."""

from __future__ import annotations

from ...requests import EditRequest
from ..fluency import generation_entropy, generation_prompts
from ..multiple_choice import multiple_choice_scores
from ..scoring import (
    TargetTokenizationError,
    object_logprobs,
)


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

