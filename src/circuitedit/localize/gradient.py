"""Gradient localization: how hard the old-object loss pulls on each component's edit parameters.

The editor trains IA3 scaling vectors: one over each head's slice of the attention output
projection's input, one over each MLP's down-projection input. With the scales at 1, the gradient
of loss = -log p(old object) with respect to such a vector, restricted to the positions t of a
group, is sum_t a_t * dL/da_t (elementwise). The score of (component, group) is its L2 norm.
One forward and one backward pass per prompt, no corrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..core.forward import hidden_states, logits_from_hidden
from ..models.components import HEAD, MLP, Component
from .base import ComponentScore, LocalizationResult, LocalizeConfig, register
from .corruption import FactPrompt
from .runner import CLEAN, PromptScores, run_per_prompt


@contextmanager
def scaled_inputs(model: nn.Module, adapter, scales: dict) -> Iterator[None]:
    """Multiply the input of every o_proj / down_proj by a (T, D) ones tensor that records grads."""
    handles = []

    def make(key):
        def hook(_module, args):
            act = args[0]
            scale = torch.ones(act.shape[-2:], dtype=act.dtype, device=act.device, requires_grad=True)
            scales[key] = (act.detach(), scale)
            return (act * scale, *args[1:])
        return hook

    try:
        for layer in range(adapter.num_layers(model)):
            for kind, name in ((HEAD, adapter.attn_out_name(layer)), (MLP, adapter.mlp_out_name(layer))):
                handles.append(model.get_submodule(name).register_forward_pre_hook(make((layer, kind))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def gradient_scores(model, adapter, prompt: FactPrompt) -> PromptScores:
    num_heads = adapter.num_heads(model)
    scales: dict = {}
    with torch.enable_grad(), scaled_inputs(model, adapter, scales):
        hidden = hidden_states(model, prompt.ids, torch.ones_like(prompt.ids))
        logits = logits_from_hidden(model, hidden[:, prompt.last_position])
        loss = -torch.log_softmax(logits, dim=-1)[0, prompt.answer_token]
        keys = list(scales)
        grads = torch.autograd.grad(loss, [scales[k][1] for k in keys])
    scores: list[ComponentScore] = []
    for (layer, kind), grad in zip(keys, grads, strict=True):
        grad = grad.float()  # (T, D): d loss / d scale[t] = a_t * dL/da_t
        for group, positions in prompt.groups.items():
            summed = grad[positions].sum(0)
            if kind == HEAD:
                norms = summed.reshape(num_heads, -1).norm(dim=-1).tolist()
                scores.extend(ComponentScore(Component(layer, HEAD, h), group, n) for h, n in enumerate(norms))
            else:
                scores.append(ComponentScore(Component(layer, MLP), group, summed.norm().item()))
    return PromptScores(scores, passes=2)


@register("gradient")
def gradient(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    return run_per_prompt("gradient", model, tokenizer, request, config, gradient_scores, prompts=CLEAN,
                          corruption="none (clean gradient)",
                          details=lambda _prompts, _extras: {"metric": "||d(-log p(old)) / d IA3 scale||"})
