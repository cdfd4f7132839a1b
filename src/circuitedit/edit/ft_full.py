"""`ft-full`: direct full fine-tuning of every weight on the shared training prompts.

The usual fine-tuning baseline: the same prompts, losses and stopping rule as every other
method (train_stage), straight to the new object, but with all parameters free. Weights are
trained in fp32 (a low-precision model is upcast first: Adam steps of ~1e-5 vanish in bf16).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .base import EditorConfig, EditOutcome, freeze, register
from .training import StageConfig, train_stage


def ft_stage_config(config: EditorConfig, lr: float) -> StageConfig:
    """The learn stage's config (margin, steps, loss weights) with a weight-training learning
    rate (EditorConfig.ft_lr or .lora_lr; the stage's own lr is an IA3 rate)."""
    return replace(config.learn, lr=lr)


def ensure_fp32(model: nn.Module) -> nn.Module:
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    return model


def unique_parameters(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


@register("ft-full")
def ft_full(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    """`model` is the pipeline's private copy (edit() deep-copies and freezes it)."""
    model = ensure_fp32(model)
    params = unique_parameters(model.parameters())  # tied embedding / LM head counted once
    for p in params:
        p.requires_grad_(True)
    targets = [request.new_object] * len(context.prompts)
    log = train_stage("finetune", model, tokenizer, context.prompts, targets, params,
                      ft_stage_config(config, config.ft_lr), context.retain, context.old_token, progress,
                      starts_at_reference=True, contexts=context.contexts)
    freeze(model)
    return EditOutcome(model=model, stages=[log])


ft_full.uses_localization = False
