"""Fact-lookup localization, after "Mechanistic Unlearning" (Guo et al. 2024) and the fact-finding
picture it builds on (Geva et al. 2023; Nanda et al. 2023): the attribute is *looked up* by MLPs
of the early-to-middle layers at the subject's tokens, and later moved to the last token.

Only MLPs are scored, and only those of the first `EARLY_FRACTION` of the layers:
- score (the ranking): the drop of log p(old object) at the last token when the MLP's output at
  the subject positions is patched with its value from the corrupted run (subject swap, or noise
  when no swap subject fits; see corruption.localization_setups);
- details["logit_lens"]: how much the MLP raises the old object's logit-lens log-probability in
  the residual stream at the subject's last token (final norm + unembedding of the stream after
  the layer minus before it), a probe-free reading of "where the attribute is extracted".
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from ..core.forward import body, hidden_states, logits_from_hidden
from ..models.arch import get_adapter
from ..models.components import MLP, Component
from ..models.hooks import layer_output_hooks, site_hooks
from .base import ComponentScore, LocalizationResult, LocalizeConfig, register
from .corruption import PatchingSetup
from .runner import PromptScores, run_per_prompt

EARLY_FRACTION = 2 / 3  # early-to-middle layers: the first two thirds of the stack


def lookup_layers(num_layers: int) -> list[int]:
    return list(range(max(1, math.ceil(num_layers * EARLY_FRACTION))))


def final_norm(model: nn.Module) -> nn.Module | None:
    inner = body(model)
    for name in ("norm", "ln_f", "final_layernorm"):
        if isinstance(getattr(inner, name, None), nn.Module):
            return getattr(inner, name)
    return None


def answer_logprob(model: nn.Module, setup: PatchingSetup, ids: torch.Tensor, corrupted: bool = False) -> torch.Tensor:
    with setup.noised(model, corrupted):
        hidden = hidden_states(model, ids, torch.ones_like(ids))
    logits = logits_from_hidden(model, hidden[:, setup.last_position])
    return torch.log_softmax(logits, dim=-1)[:, setup.answer_token]


@torch.no_grad()
def lookup_scores(model, adapter, setup: PatchingSetup, layers: list[int]) -> PromptScores:
    """The MLPs of `layers` scored on one setup; extra: the logit-lens gain of every layer."""
    corrupt: dict = {}

    def capture(site, act):
        if site[1] == MLP:
            corrupt[site] = act.detach()

    with site_hooks(model, adapter, capture):
        answer_logprob(model, setup, setup.corrupt_ids, corrupted=True)

    streams: dict = {}

    def keep(layer, hidden):
        streams[layer] = hidden[0, setup.subject_positions[-1]].detach()

    with layer_output_hooks(model, adapter, keep):
        clean = answer_logprob(model, setup, setup.clean_ids)[0].item()
    passes = 2

    lens: list[float] = []
    norm = final_norm(model)
    if norm is not None:
        # the embedding module applies the family's scaling (Gemma's sqrt(hidden)); GPT-2 adds
        # position embeddings outside it, a small shift the layer-0 gain then absorbs.
        emb = model.get_input_embeddings()(setup.clean_ids)[0, setup.subject_positions[-1]]
        stack = torch.stack([emb] + [streams[layer] for layer in range(len(streams))])
        logp = torch.log_softmax(logits_from_hidden(model, norm(stack)), dim=-1)[:, setup.answer_token]
        lens = (logp[1:] - logp[:-1]).tolist()  # gain of each layer (attention + MLP)

    patch_rows = {(layer, MLP): row for row, layer in enumerate(layers)}

    def patch(site, act):
        row = patch_rows.get(site)
        if row is None:
            return None
        act = act.clone()
        act[row, setup.subject_positions] = corrupt[site][0, setup.subject_positions]
        return act

    with site_hooks(model, adapter, patch):
        patched = answer_logprob(model, setup, setup.clean_ids.expand(len(layers), -1))
    passes += 1
    scores = [ComponentScore(Component(layer, MLP), "subject", clean - value)
              for layer, value in zip(layers, patched.tolist(), strict=True)]
    return PromptScores(scores, passes, lens)


@register("fact-lookup", reads_scan=True)
def fact_lookup(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    layers = lookup_layers(get_adapter(model).num_layers(model))

    def details(_setups, lenses: list[list[float]]) -> dict:
        lens = [sum(col) / len(col) for col in zip(*lenses, strict=True)] if lenses[0] else []
        return {"layers": layers, "metric": "log p(old) clean - with the MLP's subject-position output corrupted",
                "logit_lens": lens}

    return run_per_prompt("fact-lookup", model, tokenizer, request, config, partial(lookup_scores, layers=layers),
                          scan=scan, details=details)
