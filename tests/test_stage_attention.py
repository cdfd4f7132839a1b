"""A stage may train under another attention kernel: same losses, and the model's kernel restored."""

from __future__ import annotations

import copy

import pytest
import torch

from circuitedit.edit.base import freeze
from circuitedit.edit.ia3 import attach_ia3, ia3_vectors
from circuitedit.edit.training.loop import StageConfig, StageInputs, train_stage
from circuitedit.models import MLP, Component
from circuitedit.models.arch import get_adapter
from tiny import FAMILIES, tiny_model

PROMPTS = ["The Eiffel Tower is located in the city of", "Tourists visit the Eiffel Tower in the city of"]
CONTEXTS = ["", "Tourists visit"]


def run_stage(model, tokenizer, attention):
    working = copy.deepcopy(model)
    freeze(working)
    peft_model = attach_ia3(working, get_adapter(working), [Component(0, MLP), Component(1, MLP)])
    params = list(ia3_vectors(peft_model).values())
    config = StageConfig(lr=0.1, max_steps=4, min_steps=4, margin=1e9, attention=attention)
    edited = peft_model.get_base_model()
    kernels = set()
    inputs = StageInputs(PROMPTS, ["Rome"] * 2, params, contexts=CONTEXTS)
    log = train_stage("learn", edited, tokenizer, inputs, config,
                      progress=lambda *_: kernels.add(edited.config._attn_implementation))
    return edited, log, [p.detach().clone() for p in params], kernels


@pytest.mark.parametrize("family", FAMILIES)
def test_an_eager_stage_trains_as_the_default_kernel_does(family):
    torch.manual_seed(0)
    model, tokenizer = tiny_model(family)
    model = model.float()
    kernel = model.config._attn_implementation
    assert kernel != "eager"
    _, default_log, default_params, default_kernels = run_stage(model, tokenizer, None)
    edited, eager_log, eager_params, eager_kernels = run_stage(model, tokenizer, "eager")
    assert default_kernels == {kernel} and eager_kernels == {"eager"}
    assert edited.config._attn_implementation == kernel  # restored after the stage
    assert eager_log.steps == default_log.steps == 4
    torch.testing.assert_close(torch.tensor(eager_log.losses), torch.tensor(default_log.losses), atol=1e-4, rtol=1e-4)
    for eager, default in zip(eager_params, default_params, strict=True):
        assert not torch.equal(default, torch.ones_like(default))  # the stage did train
        torch.testing.assert_close(eager, default, atol=1e-4, rtol=1e-4)
