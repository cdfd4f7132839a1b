"""No localization: every head and MLP of every layer, with equal scores. The result's
`selects_all` flag makes `select()` return all of them (of the requested kinds) whatever top_k or
fraction say, so baselines edit the whole model through the same code path. No forward pass."""

from __future__ import annotations

import time

from ..models.arch import get_adapter
from .base import ComponentScore, LocalizationResult, LocalizeConfig, register
from .random_baseline import POSITION


@register("all-layers")
def all_layers(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    start = time.perf_counter()
    comps = get_adapter(model).all_layer_components(model)
    return LocalizationResult(method="all-layers", scores=[ComponentScore(c, POSITION, 1.0) for c in comps],
                              passes=0, seconds=time.perf_counter() - start, corruption="none",
                              details={"components": len(comps)}, selects_all=True)
