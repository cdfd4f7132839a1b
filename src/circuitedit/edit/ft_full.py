"""`ft-full`: direct full fine-tuning of every weight on the shared training prompts.

The usual fine-tuning baseline: the same prompts, losses and stopping rule as every other
method (train_stage), straight to the new object, but with all parameters free. Weights are
trained in fp32 (a low-precision model is upcast first: Adam steps of ~1e-5 vanish in bf16).
"""


from __future__ import annotations

from .base import EditOutcome, freeze, register
from .finetune import ensure_fp32, ft_stage_config, unique_parameters
from .training.loop import StageInputs, train_stage


@register("ft-full")
def ft_full(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    """`model` is the pipeline's private copy (edit() deep-copies and freezes it)."""
    model = ensure_fp32(model)
    params = unique_parameters(model.parameters())  # tied embedding / LM head counted once
    for p in params:
        p.requires_grad_(True)
    targets = [request.new_object] * len(context.prompts)
    inputs = StageInputs.from_context(context, targets, params, starts_at_reference=True)
    log = train_stage("finetune", model, tokenizer, inputs, ft_stage_config(config, config.ft_lr), progress)
    freeze(model)
    return EditOutcome(model=model, stages=[log])


ft_full.uses_localization = False
