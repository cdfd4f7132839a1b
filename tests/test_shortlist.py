"""Training on an LM-head shortlist: it stops only when the full vocabulary agrees."""

from __future__ import annotations

import copy

import pytest
import torch

from circuitedit.core.forward import hidden_states
from circuitedit.core.head import head_reductions
from circuitedit.core.tokens import build_batch
from circuitedit.edit.base import freeze
from circuitedit.edit.ia3 import attach_ia3, ia3_vectors
from circuitedit.edit.training.loop import StageConfig, StageInputs, train_stage
from circuitedit.models import MLP, Component, get_adapter
from tiny import tiny_model

PROMPTS = ["The Eiffel Tower is located in the city of", "Tourists visit the Eiffel Tower in the city of"]


@pytest.mark.parametrize("top_k", [None, 3])
def test_a_shortlisted_stage_converges_on_the_full_vocabulary(top_k):
    torch.manual_seed(0)
    model, tokenizer = tiny_model("llama")
    with torch.no_grad():  # a random head's logits are too flat for any margin; a trained one's are not
        model.get_output_embeddings().weight.mul_(10)
    working = copy.deepcopy(model.float())
    freeze(working)
    peft_model = attach_ia3(working, get_adapter(working), [Component(0, MLP), Component(1, MLP)])
    params = list(ia3_vectors(peft_model).values())
    config = StageConfig(lr=0.1, max_steps=200, margin=1.0, shortlist_top_k=top_k, full_vocab_every=50)
    edited = peft_model.get_base_model()
    log = train_stage("learn", edited, tokenizer, StageInputs(PROMPTS, ["Rome"] * 2, params), config)
    assert log.converged and 1 < log.steps < config.max_steps
    if top_k is None:
        assert log.full_vocab_passes == log.steps + 1
    else:
        # the first pass, the checks of a shortlisted "reached" (one per check), no refresh at 50
        assert 2 <= log.full_vocab_passes < log.steps
    with torch.no_grad():
        batch = build_batch(tokenizer, PROMPTS, ["Rome"] * 2, torch.device("cpu"))
        hidden = hidden_states(edited, batch.input_ids, batch.attention_mask)[batch.rows, batch.positions]
        full = head_reductions(edited, hidden, batch.targets[:, None])
    assert bool((full.margins(0) >= config.margin).all())  # judged on all tokens, not the shortlist
