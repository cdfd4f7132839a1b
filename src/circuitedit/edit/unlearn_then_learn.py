"""Ours: IA3 unlearn (answer with uncertainty, merge) then IA3 learn (the new object)."""

from __future__ import annotations

from ..models.arch import get_adapter
from .base import AdapterArtifact, EditOutcome, register, register_batch, union
from .ia3 import attach_ia3, ia3_vectors, merge_fp32
from .training.loop import StageInputs, train_stage


def ia3_stage(name, model, tokenizer, components, targets, context, stage_config, config, progress=None,
              starts_at_reference=False):
    """Attach a fresh IA3 adapter on `components`, train it to `targets`; returns (peft_model, log)."""
    adapter = get_adapter(model)
    peft_model = attach_ia3(model, adapter, components, config.mlp_scaling)
    params = list(ia3_vectors(peft_model).values())
    inputs = StageInputs.from_context(context, targets, params, starts_at_reference)
    log = train_stage(name, peft_model.get_base_model(), tokenizer, inputs, stage_config, progress)
    return peft_model, log


def two_stages(model, tokenizer, requests, components, context, config, progress=None) -> EditOutcome:
    """Unlearn (each prompt's subject answered with the uncertainty text; merged), then learn
    (each prompt's new object), on `components`; `context.owners` names each prompt's request."""
    uncertainty = context.per_prompt(requests, lambda r: config.uncertainty.format(subject=r.subject))
    peft_model, unlearn_log = ia3_stage(
        "unlearn", model, tokenizer, components, uncertainty, context, config.unlearn, config, progress,
        starts_at_reference=True,
    )
    artifacts = [AdapterArtifact.capture("unlearn", peft_model)]
    model = merge_fp32(peft_model)

    peft_model, learn_log = ia3_stage("learn", model, tokenizer, components,
                                      context.per_prompt(requests, lambda r: r.new_object), context, config.learn,
                                      config, progress)
    artifacts.append(AdapterArtifact.capture("learn", peft_model))
    edited = merge_fp32(peft_model) if config.merge_learned else peft_model
    return EditOutcome(model=edited, stages=[unlearn_log, learn_log], adapters=artifacts)


@register("unlearn-then-learn")
def unlearn_then_learn(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    return two_stages(model, tokenizer, [request], components, context, config, progress)


@register_batch("unlearn-then-learn")
def unlearn_then_learn_many(model, tokenizer, requests, components, context, config, progress=None) -> EditOutcome:
    """Every request in one training: the union of their components, all their prompts."""
    return two_stages(model, tokenizer, requests, union(components), context, config, progress)
