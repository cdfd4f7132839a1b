"""`rome-unlearn-then-learn`: the paper's two stages on a keyed editor. Stage 1 writes the
uncertainty answer into the subject's key with ROME; stage 2 writes the new object with ROME on the
stage-1 model, at the same layer. Each stage's weight delta is saved (adapters/unlearn,
adapters/learn), so an audit can measure the model after stage 1 as for the IA3 recipe."""

from __future__ import annotations

from dataclasses import replace

from ..models.components import MLP, Component
from .base import EditOutcome, register
from .covariance import CorpusSpec, layer_covariance
from .rome import edited_layer, rome


@register("rome-unlearn-then-learn")
def rome_unlearn_then_learn(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
    uncertain = replace(request, new_object=config.uncertainty.format(subject=request.subject))
    keyed = config.keyed
    layer = edited_layer(list(components), keyed.layer)
    # Both stages key on the unedited model's statistics (the stage-1 model is a new fingerprint).
    covariance = layer_covariance(context.key_source(model), tokenizer, layer, CorpusSpec(keyed.covariance_tokens),
                                  cache=keyed.cache_covariance)
    stages, artifacts = [], []
    for name, target in (("unlearn", uncertain), ("learn", request)):
        outcome = rome(model, tokenizer, target, [Component(layer, MLP)], context, config, progress, covariance)
        (artifact,) = outcome.adapters
        artifact.name = outcome.stages[0].name = name
        model = outcome.model
        stages += outcome.stages
        artifacts.append(artifact)
    return EditOutcome(model=model, stages=stages, adapters=artifacts)


rome_unlearn_then_learn.uses_retain = False
