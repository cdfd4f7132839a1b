"""`learn-only`: one IA3 stage straight to the new object on the localized components
(no unlearning stage first): the ablation of the unlearn step."""

from __future__ import annotations

from .base import AdapterArtifact, EditOutcome, register, register_batch, union
from .ia3 import merge_fp32
from .unlearn_then_learn import ia3_stage


def learn(model, tokenizer, requests, components, context, config, progress=None) -> EditOutcome:
    targets = context.per_prompt(requests, lambda r: r.new_object)
    peft_model, log = ia3_stage("learn", model, tokenizer, components, targets, context, config.learn, config, progress,
                               starts_at_reference=True)
    artifact = AdapterArtifact.capture("learn", peft_model)
    edited = merge_fp32(peft_model) if config.merge_learned else peft_model
    return EditOutcome(model=edited, stages=[log], adapters=[artifact])


@register("learn-only")
def learn_only(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    return learn(model, tokenizer, [request], components, context, config, progress)


@register_batch("learn-only")
def learn_only_many(model, tokenizer, requests, components, context, config, progress=None) -> EditOutcome:
    """Every request in one training: the union of their components, all their prompts."""
    return learn(model, tokenizer, requests, union(components), context, config, progress)
