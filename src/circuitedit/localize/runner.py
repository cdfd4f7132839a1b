"""The runner every per-prompt localizer shares: build the prompts (corruption.py), score each
with the method's own function, average the scores over the prompts, time it all."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..models.arch import get_adapter
from .base import ComponentScore, LocalizationResult, LocalizeConfig, mean_over_prompts
from .corruption import FactPrompt, fact_prompts, localization_setups

# Which prompts a method scores: PatchingSetups (each with its corrupted twin: a swapped subject,
# or noise), fact prompts with seeded subject noise, or clean fact prompts.
PATCHING, NOISED, CLEAN = "patching", "noised", "clean"


class PromptScores(NamedTuple):
    """What a method's scoring gives for one prompt."""

    scores: list[ComponentScore]
    passes: int  # forward + backward passes spent on it
    extra: Any = None  # what the method keeps of this prompt for its details (a trace, a logit lens)


def run_per_prompt(
    name: str,
    model,
    tokenizer,
    request,
    config: LocalizeConfig,
    score_prompt: Callable[[Any, Any, FactPrompt], PromptScores],
    *,
    prompts: str = PATCHING,
    scan=None,
    corruption: str | None = None,
    details: Callable[[Sequence[FactPrompt], list], dict] | None = None,
) -> LocalizationResult:
    """score_prompt(model, adapter, prompt) on every prompt of the kind `prompts`, the scores
    averaged over them. corruption: what the result says corrupted the subject (None: the
    setups' own corruptions, joined); details(prompts, extras): the method's details, after
    the number of prompts."""
    start = time.perf_counter()
    adapter = get_adapter(model)
    if prompts == PATCHING:
        scored = localization_setups(model, tokenizer, request, config, scan)
    elif prompts in (NOISED, CLEAN):
        scored = fact_prompts(model, tokenizer, request, config, noise=prompts == NOISED)
    else:
        raise ValueError(f"prompts: expected {PATCHING}, {NOISED} or {CLEAN}, got {prompts!r}")
    results = [score_prompt(model, adapter, p) for p in scored]
    extra = details(scored, [r.extra for r in results]) if details else {}
    return LocalizationResult(
        method=name, scores=mean_over_prompts([r.scores for r in results]), passes=sum(r.passes for r in results),
        corruption="; ".join(s.corruption for s in scored) if corruption is None else corruption,
        details={"prompts": len(scored), **extra}, seconds=time.perf_counter() - start,
    )
