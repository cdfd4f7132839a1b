"""`ia3-all-layers`: unlearn-then-learn without localization: every head and MLP of every layer."""

from __future__ import annotations

from ..models.arch import get_adapter
from .base import EditOutcome, register
from .unlearn_then_learn import unlearn_then_learn


@register("ia3-all-layers")
def ia3_all_layers(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    everything = get_adapter(model).all_layer_components(model)
    return unlearn_then_learn(model, tokenizer, request, everything, context, config, progress)


ia3_all_layers.uses_localization = False
