"""`ft-localized`: full fine-tuning of only the localized modules' weights.

MLP components free their block's input and output projections; head components free only
their own slice of the attention output projection (the heads share that matrix, so the other
heads' columns are masked and restored, and its shared bias stays frozen).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.arch import ArchitectureAdapter, get_adapter
from ..models.components import HEAD, Component
from .base import EditOutcome, freeze, register
from .finetune import ensure_fp32, ft_stage_config
from .training.loop import StageInputs, train_stage


def head_masks(model: nn.Module, adapter: ArchitectureAdapter, components: Sequence[Component]) -> dict[str, torch.Tensor]:
    """{attention output module name: boolean mask over its weight} for the selected heads."""
    heads: dict[int, set[int]] = {}
    for comp in components:
        if comp.kind == HEAD:
            heads.setdefault(comp.layer, set()).add(comp.head)
    width = adapter.head_dim(model)
    masks = {}
    for layer, selected in heads.items():
        name = adapter.attn_out_name(layer)
        weight = model.get_submodule(name).weight
        mask = torch.zeros_like(weight, dtype=torch.bool)
        for head in selected:
            cols = slice(head * width, (head + 1) * width)
            if adapter.weights_transposed:  # (in, out): a head's inputs are rows
                mask[cols, :] = True
            else:
                mask[:, cols] = True
        masks[name] = mask
    return masks


@register("ft-localized")
def ft_localized(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    if not components:
        raise ValueError("ft-localized needs at least one localized component")
    model = ensure_fp32(model)
    adapter = get_adapter(model)
    masks = head_masks(model, adapter, components)
    params, originals, effective = [], {}, 0
    for name in adapter.weight_targets(components):
        module = model.get_submodule(name)
        weight = module.weight
        weight.requires_grad_(True)
        params.append(weight)
        if name in masks:
            mask = masks[name]
            originals[name] = weight.detach().clone()
            weight.register_hook(lambda grad, mask=mask: grad * mask)
            effective += int(mask.sum())
        else:
            effective += weight.numel()
            if getattr(module, "bias", None) is not None:
                module.bias.requires_grad_(True)
                params.append(module.bias)
                effective += module.bias.numel()
    targets = [request.new_object] * len(context.prompts)
    inputs = StageInputs.from_context(context, targets, params, starts_at_reference=True)
    log = train_stage("finetune", model, tokenizer, inputs, ft_stage_config(config, config.ft_lr), progress)
    with torch.no_grad():  # unselected heads exactly as they were (weight decay would move them)
        for name, original in originals.items():
            weight = model.get_submodule(name).weight
            weight.copy_(torch.where(masks[name], weight, original))
    log.trainable_parameters = effective
    freeze(model)
    return EditOutcome(model=model, stages=[log])
