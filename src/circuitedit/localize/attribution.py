"""Attribution patching: a first-order estimate of every component's patching effect.

score(c, pos) = (a_corrupt - a_clean) . d metric / d a_clean, for all components at once from one
clean forward+backward and one corrupted forward (Nanda 2023; Syed et al. 2023).
"""

from __future__ import annotations

import torch

from ..models.components import HEAD, MLP, Component
from ..models.hooks import Site, site_hooks
from .base import ComponentScore, LocalizationResult, LocalizeConfig, register
from .corruption import PatchingSetup
from .runner import PromptScores, run_per_prompt


def site_width_split(comp_site: Site, act: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reshape a site's activation (..., D) into per-component parts (..., C, D/C)."""
    if comp_site[1] == HEAD:
        return act.reshape(*act.shape[:-1], num_heads, act.shape[-1] // num_heads)
    return act.unsqueeze(-2)


def site_components(site: Site, num_heads: int) -> list[Component]:
    layer, kind = site
    if kind == HEAD:
        return [Component(layer, HEAD, h) for h in range(num_heads)]
    return [Component(layer, MLP)]


def attribution_scores(model, adapter, setup: PatchingSetup) -> PromptScores:
    """Every component's score on one setup: one clean forward+backward, one corrupted forward."""
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
    return PromptScores(scores, passes=3)


@register("attribution", reads_scan=True)
def attribution(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    return run_per_prompt("attribution", model, tokenizer, request, config, attribution_scores, scan=scan)
