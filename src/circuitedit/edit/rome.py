"""`rome`: Rank-One Model Editing (Meng et al. 2022, arXiv 2202.05262), from the paper's text.

At one MLP (the top-ranked localized MLP, or `keyed.layer`), the fact's key k* is the down
projection's input at the subject's last token, averaged over the training prompts (the edit
prompt, its paraphrases and their sampled prefixes). A shift δ of that projection's output at the
subject's last token is optimised so that the model states the new object, with a KL term that
keeps what the model says about the subject itself ("{subject} is a") and a bound on ‖δ‖. Then

    W ← W + δ uᵀ / (uᵀ k*),   u = (C + λI)⁻¹ k*,   C = E[k kᵀ] on ordinary text,

so W k* moves by exactly δ, and a key k with uᵀk = 0 (orthogonal to k* in the C⁻¹ metric) maps
as before: the edit is keyed on the subject's representation, not on the words of the prompt.
"""

from __future__ import annotations

import torch

from ..core.forward import input_device
from ..models.arch import get_adapter
from ..models.hooks import mlp_output_shift
from .base import EditOutcome, register
from .covariance import CorpusSpec, layer_covariance
from .keyvalue import (
    edited_layer,
    layer_delta,
    optimise_value,
    ridged,
    subject_keys,
    subject_prompts,
    value_rows,
)


def key_and_output(model, adapter, layer: int, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """(k*, W k* + b): the mean key at the training prompts' subject tokens, and its output."""
    key = subject_keys(model, adapter, layer, rows).mean(0)  # (d_k,)
    module = model.get_submodule(adapter.mlp_out_name(layer))
    with torch.no_grad():
        output = module(key.to(module.weight.dtype)[None])[0].float()  # (d,)
    return key, output


def rank_one_update(key: torch.Tensor, delta: torch.Tensor, covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    """ΔW (d, d_k) = δ uᵀ / (uᵀ k*), u = (C + λI)⁻¹ k*, λ = ridge · mean(diag C): ΔW k* = δ exactly,
    and ΔW k = 0 for every k with uᵀ k = 0."""
    u = torch.linalg.solve(ridged(covariance, ridge), key.double())
    return (torch.outer(delta.double(), u) / (u @ key.double())).float()


@register("rome")
def rome(model, tokenizer, request, components, context, config, progress=None, covariance=None) -> EditOutcome:
    """`model` is the pipeline's private copy (edit() deep-copies and freezes it). covariance: the
    layer's C when the caller has it (a second edit of the same layer keys on the base model's)."""
    keyed = config.keyed
    adapter = get_adapter(model)
    layer = edited_layer(list(components), keyed.layer)
    rows = value_rows(tokenizer, request, subject_prompts(request, context.prompts), input_device(model))
    key, output = key_and_output(model, adapter, layer, rows)
    shift = lambda d: mlp_output_shift(model, adapter, layer, rows.subject_rows, rows.subject_positions, d)  # noqa: E731
    delta, log = optimise_value(model, rows, output, keyed, shift, keyed.clamp_norm, progress)
    if covariance is None:
        covariance = layer_covariance(context.key_source(model), tokenizer, layer, CorpusSpec(keyed.covariance_tokens),
                                      cache=keyed.cache_covariance)
    artifact = layer_delta("rome", adapter, layer, rank_one_update(key, delta, covariance.to(key.device), keyed.ridge))
    return EditOutcome(model=artifact.apply(model), stages=[log], adapters=[artifact])


rome.uses_retain = False
