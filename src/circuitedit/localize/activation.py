"""Exact activation patching: replace one component's activation at one position group with
its corrupted value and measure the change of the metric. One forward per (component, group),
batched."""

from __future__ import annotations

import torch

from ..models.components import HEAD
from ..models.hooks import row_patcher, site_hooks
from .base import ComponentScore, LocalizationResult, LocalizeConfig, register
from .corruption import PatchingSetup
from .runner import PromptScores, run_per_prompt


@torch.no_grad()
def activation_patching_scores(model, adapter, setup: PatchingSetup, batch_size: int = 32) -> PromptScores:
    corrupt_acts: dict = {}

    def capture(site, act):
        corrupt_acts[site] = act.detach()

    with site_hooks(model, adapter, capture):
        setup.run(model, setup.corrupt_ids, corrupted=True)
    clean_metric = setup.run(model, setup.clean_ids)[0].item()

    head_width = adapter.head_dim(model)
    jobs = []  # (component, group, site, positions, dim slice)
    for comp in adapter.all_layer_components(model):
        site = (comp.layer, comp.kind)
        dims = slice(comp.head * head_width, (comp.head + 1) * head_width) if comp.kind == HEAD else slice(None)
        for group, positions in setup.groups.items():
            jobs.append((comp, group, site, positions, dims))

    scores: list[ComponentScore] = []
    passes = 2
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        by_site: dict = {}
        for row, (_c, _g, site, positions, dims) in enumerate(chunk):
            by_site.setdefault(site, []).append((row, positions, dims))

        ids = setup.clean_ids.expand(len(chunk), -1)
        with site_hooks(model, adapter, row_patcher(by_site, corrupt_acts)):
            metrics = setup.run(model, ids)
        passes += 1
        for (comp, group, *_), value in zip(chunk, metrics.tolist(), strict=True):
            scores.append(ComponentScore(comp, group, value - clean_metric))
    return PromptScores(scores, passes)


@register("activation", reads_scan=True)
def activation(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    return run_per_prompt("activation", model, tokenizer, request, config, activation_patching_scores, scan=scan)
