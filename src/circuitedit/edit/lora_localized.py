"""`lora-localized`: a LoRA adapter (PEFT) on the localized modules only, merged after training.

Same modules as ft-localized; for head components the LoRA down-projection reads only the
selected heads' slice of the attention output projection's input (other columns zeroed and
their gradient masked), so unselected heads are untouched.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from ..models.arch import get_adapter
from .base import AdapterArtifact, EditOutcome, register
from .finetune import ft_stage_config
from .ft_localized import head_masks
from .ia3 import merge_fp32
from .training.loop import StageInputs, train_stage

LORA_RANK = 8
LORA_ALPHA = 16


@register("lora-localized")
def lora_localized(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    if not components:
        raise ValueError("lora-localized needs at least one localized component")
    adapter = get_adapter(model)
    masks = head_masks(model, adapter, components)
    targets = adapter.weight_targets(components)
    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=targets, bias="none",
                      fan_in_fan_out=adapter.weights_transposed)
    peft_model = get_peft_model(model, lora)
    base = peft_model.get_base_model()
    params, effective = [], 0
    for name in targets:
        module = base.get_submodule(name)
        # LoRA layers are created in the base layer's dtype; train them in fp32.
        module.lora_A["default"].float()
        module.lora_B["default"].float()
        down, up = module.lora_A["default"].weight, module.lora_B["default"].weight  # (r, in), (out, r)
        if name in masks:
            weight_mask = masks[name]
            column = weight_mask.any(0) if not hasattr(module.base_layer, "nx") else weight_mask.any(1)
            with torch.no_grad():
                keep = column.to(down.dtype)
                down.mul_(keep)
            down.register_hook(lambda grad, keep=keep: grad * keep)
            effective += int(column.sum()) * down.shape[0]
        else:
            effective += down.numel()
        effective += up.numel()
        params += [down, up]
    for p in peft_model.parameters():
        p.requires_grad_(any(p is q for q in params))
    labels = [request.new_object] * len(context.prompts)
    inputs = StageInputs.from_context(context, labels, params, starts_at_reference=True)
    log = train_stage("lora", base, tokenizer, inputs, ft_stage_config(config, config.lora_lr), progress)
    log.trainable_parameters = effective
    artifact = AdapterArtifact.capture("lora", peft_model)
    merged = merge_fp32(peft_model)
    for p in merged.parameters():
        p.requires_grad_(False)
    return EditOutcome(model=merged, stages=[log], adapters=[artifact])
