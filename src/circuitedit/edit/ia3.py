"""IA3 adapters restricted to localized components (PEFT), and their fp32 merge."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import IA3Config, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..models.arch import ArchitectureAdapter
from ..models.components import HEAD, Component


def attach_ia3(
    model: nn.Module, adapter: ArchitectureAdapter, components: Sequence[Component], mlp_scaling: str = "hidden"
) -> PeftModel:
    """Wrap `model` (modified in place: pass a copy) with an IA3 adapter on `components` only.

    Heads share their layer's attention output projection, so the IA3 vector there covers all
    heads; a gradient mask keeps the unselected heads' slices at exactly 1.
    """
    targets, feedforward = adapter.ia3_targets(components, mlp_scaling)
    config = IA3Config(target_modules=targets, feedforward_modules=feedforward, init_ia3_weights=True,
                       fan_in_fan_out=adapter.weights_transposed)
    peft_model = get_peft_model(model, config)
    mask_unselected_heads(peft_model, adapter, components)
    return peft_model


def ia3_vectors(peft_model: nn.Module) -> dict[str, nn.Parameter]:
    """{module name: IA3 vector} of the active adapter."""
    out = {}
    for name, param in peft_model.named_parameters():
        if "ia3_l" in name:
            out[name.split(".ia3_l")[0]] = param
    return out


def mask_unselected_heads(peft_model: nn.Module, adapter: ArchitectureAdapter, components: Sequence[Component]) -> None:
    base = peft_model.get_base_model()
    width = adapter.head_dim(base)
    heads_by_layer: dict[int, set[int]] = {}
    for comp in components:
        if comp.kind == HEAD:
            heads_by_layer.setdefault(comp.layer, set()).add(comp.head)
    for layer, heads in heads_by_layer.items():
        name = adapter.attn_out_name(layer)
        module = base.get_submodule(name)
        for param in module.ia3_l.values():
            mask = torch.zeros_like(param)
            for head in heads:
                mask[..., head * width:(head + 1) * width] = 1
            param.register_hook(lambda grad, mask=mask: grad * mask)


def merge_fp32(peft_model: PeftModel) -> nn.Module:
    """Merge a PEFT adapter (IA3, LoRA) into the base weights in fp32; return the plain model.

    Low-precision weights are upcast for the multiplication and cast back once, so merged
    and adapter outputs agree to fp32 rounding.
    """
    base = peft_model.get_base_model()
    restore = {}
    for name, module in base.named_modules():
        if isinstance(module, BaseTunerLayer):
            layer = module.base_layer
            if layer.weight.dtype != torch.float32:
                restore[name] = layer.weight.dtype
                layer.to(torch.float32)
    merged = peft_model.merge_and_unload()
    for name, dtype in restore.items():
        merged.get_submodule(name).to(dtype)
    return merged


def ia3_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in ia3_vectors(peft_model).items()}
