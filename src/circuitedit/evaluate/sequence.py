"""What a model holding many edits is measured on after each batch: every fact edited so far
(are earlier edits still there?), CounterFact's paraphrase and neighbourhood scores, F_control
against the unedited model and the fluency of its generations."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean

import torch

from ..core.forward import object_logprobs
from ..core.generate import greedy_continuations
from ..core.matching import contains_object
from ..core.tokens import TargetTokenizationError, prompt_and_target_ids
from ..data.facts import Fact, controls_for
from ..data.requests import EditRequest
from .fluency import generation_entropy
from .metrics import retained_share
from .snapshots import EvalConfig, Snapshot, control_snapshot

# Open prompts whose generations measure fluency: the same texts after every batch.
FLUENCY_PROMPTS = ("The history of the city", "My favourite food is", "In the morning, the scientist",
                   "The most important thing about music is")


def wins(model, tokenizer, prompts: Sequence[str], better: Sequence[str], worse: Sequence[str],
         batch_size: int) -> list[bool]:
    """Per prompt: log P(better) > log P(worse) (multi-token objects summed)."""
    if not prompts:
        return []
    count = len(prompts)
    logprobs = object_logprobs(model, tokenizer, list(prompts) * 2, [*better, *worse], batch_size)
    return (logprobs[:count] > logprobs[count:]).tolist()


def _mean(values: Sequence[bool | float]) -> float | None:
    return fmean(float(v) for v in values) if values else None


def grouped_wins(model, tokenizer, groups: Sequence[Sequence[tuple[str, str, str]]], batch_size: int) -> list[list[bool]]:
    """Per group of (prompt, better, worse): `wins` of each, all groups in one batched pass."""
    flat = [item for group in groups for item in group]
    won = wins(model, tokenizer, [p for p, _, _ in flat], [b for _, b, _ in flat], [w for _, _, w in flat],
               batch_size)
    out, start = [], 0
    for group in groups:
        out.append(won[start:start + len(group)])
        start += len(group)
    return out


def neighbour_rows(tokenizer, request: EditRequest) -> list[tuple[str, str, str]]:
    """(prompt, true answer, new object) of each neighbourhood prompt; none where the tokenizer
    cannot write an answer after its prompt."""
    rows = [(n["prompt"], n["answer"], request.new_object) for n in request.neighbourhood]
    try:
        for prompt, answer, new in rows:
            prompt_and_target_ids(tokenizer, prompt, answer)
            prompt_and_target_ids(tokenizer, prompt, new)
    except TargetTokenizationError:
        return []
    return rows


def fact_scores(model, tokenizer, requests: Sequence[EditRequest], config: EvalConfig) -> list[dict]:
    """Per request: efficacy P(new) > P(old) on the edit prompt, the share of held-out
    paraphrases with P(new) > P(old), the share of neighbourhood prompts with P(true) > P(new),
    and whether the greedy continuation of the edit prompt states the new object."""
    size = config.batch_size
    texts = greedy_continuations(model, tokenizer, [r.text for r in requests], config.max_new_tokens)
    efficacy = grouped_wins(model, tokenizer, [[(r.text, r.new_object, r.old_object)] for r in requests], size)
    paraphrase = grouped_wins(model, tokenizer, [[(p, r.new_object, r.old_object) for p in r.held_out_prompts]
                                                 for r in requests], size)
    neighbours = grouped_wins(model, tokenizer, [neighbour_rows(tokenizer, r) for r in requests], size)
    return [{"stated": contains_object(text, r.new_object), "efficacy": bool(won[0]), "paraphrase": _mean(para),
             "neighbourhood": _mean(near)}
            for r, text, won, para, near in zip(requests, texts, efficacy, paraphrase, neighbours, strict=True)]


def sequence_measures(model, tokenizer, requests: Sequence[EditRequest], earlier: int, controls: list[Fact],
                      base_controls: Snapshot, base_entropy: float, config: EvalConfig) -> dict:
    """The model after a batch: `requests` are every fact edited so far, the first `earlier` of
    them before this batch; F_control over every control fact the unedited model stated
    (`base_controls`), none about an edited subject; entropy beside the unedited model's."""
    scores = fact_scores(model, tokenizer, requests, config)
    after = control_snapshot(model, tokenizer, requests[0], controls, config)
    kept = [f for f in controls if all(f in controls_for(r, [f]) for r in requests)]
    f_control, stated = retained_share(kept, base_controls, after)
    entropy, _ = generation_entropy(model, tokenizer, FLUENCY_PROMPTS)
    pick = lambda key, part: _mean([s[key] for s in part if s[key] is not None])  # noqa: E731
    return {
        "edits": len(requests),
        "new_fact_accuracy": pick("stated", scores),
        "efficacy": pick("efficacy", scores),
        "paraphrase_efficacy": pick("paraphrase", scores),
        "neighbourhood_specificity": pick("neighbourhood", scores),
        "earlier_retained": pick("stated", scores[:earlier]),
        "earlier_efficacy": pick("efficacy", scores[:earlier]),
        "f_control": f_control,
        "controls_stated_before": stated,
        "generation_entropy": entropy,
        "generation_entropy_before": base_entropy,
        "per_fact": scores,
    }


def unedited_references(model, tokenizer, request: EditRequest, controls: list[Fact],
                        config: EvalConfig) -> tuple[Snapshot, float]:
    """(the unedited model's control snapshot, its fluency-prompt entropy), taken once per sequence."""
    with torch.no_grad():
        return control_snapshot(model, tokenizer, request, controls, config), \
            generation_entropy(model, tokenizer, FLUENCY_PROMPTS)[0]
