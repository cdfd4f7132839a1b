"""The random control: every component gets a seeded uniform score, so `select(top_k, kinds)`
draws the same number of components as any other localizer would give, uniformly at random.
Every real localization must beat this. No forward pass."""

from __future__ import annotations

import time

import numpy as np

from ..models.arch import get_adapter
from .base import ComponentScore, LocalizationResult, LocalizeConfig, register

POSITION = "all"  # random and all-layers scores belong to no position group


@register("random")
def random_components(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    start = time.perf_counter()
    comps = get_adapter(model).all_layer_components(model)
    values = np.random.default_rng(config.seed).random(len(comps))
    scores = [ComponentScore(c, POSITION, float(v)) for c, v in zip(comps, values, strict=True)]
    result = LocalizationResult(method="random", scores=scores, passes=0, corruption="none",
                                details={"seed": config.seed})
    result.details["drawn"] = [c.name for c in result.select(config.top_k, config.kinds, config.fraction)]
    result.seconds = time.perf_counter() - start
    return result
