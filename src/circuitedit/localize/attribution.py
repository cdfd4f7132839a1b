"""Attribution patching: a first-order estimate of every component's patching effect.

score(c, pos) = (a_corrupt - a_clean) . d metric / d a_clean, for all components at once from one
clean forward+backward and one corrupted forward (Nanda 2023; Syed et al. 2023).
"""

from __future__ import annotations

import time

import torch

from ..models.arch import get_adapter
from ..models.hooks import site_hooks
from .base import ComponentScore, LocalizationResult, LocalizeConfig, mean_over_prompts, register
from .corruption import PatchingSetup, site_components, site_width_split
from .setup import localization_setups


def attribution_scores(model, adapter, setup: PatchingSetup) -> list[ComponentScore]:
    num_heads = adapter.num_heads(model)
    clean_acts: dict = {}
    deltas: dict = {}

    def add_delta(site, act):
        clean_acts[site] = act.detach()
        delta = torch.zeros_like(act, requires_grad=True)
        deltas[site] = delta
        return act + delta

    with torch.enable_grad(), site_hooks(model, adapter, add_delta):
        metric = setup.run(model, setup.clean_ids)
        # autograd.grad, not backward(): only the deltas' gradients, never the weights'.
        sites = list(deltas)
        grads = dict(zip(sites, torch.autograd.grad(metric.sum(), [deltas[s] for s in sites]), strict=True))

    corrupt_acts: dict = {}

    def capture(site, act):
        corrupt_acts[site] = act.detach()

    with torch.no_grad(), site_hooks(model, adapter, capture):
        setup.run(model, setup.corrupt_ids, corrupted=True)

    scores: list[ComponentScore] = []
    for site, grad in grads.items():
        diff = (corrupt_acts[site] - clean_acts[site]).float() * grad.float()  # (1, T, D)
        per_comp = site_width_split(site, diff[0], num_heads).sum(-1)  # (T, C)
        for group, positions in setup.groups.items():
            values = per_comp[positions].sum(0)
            for comp, value in zip(site_components(site, num_heads), values.tolist(), strict=True):
                scores.append(ComponentScore(comp, group, value))
    return scores


@register("attribution", reads_scan=True)
def attribution(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    start = time.perf_counter()
    adapter = get_adapter(model)
    setups = localization_setups(model, tokenizer, request, config, scan)
    per_prompt = [attribution_scores(model, adapter, s) for s in setups]
    return LocalizationResult(
        method="attribution", scores=mean_over_prompts(per_prompt), passes=3 * len(setups),
        seconds=time.perf_counter() - start, corruption="; ".join(s.corruption for s in setups),
        details={"prompts": len(setups)},
    )
