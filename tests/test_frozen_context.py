"""Training rows with a frozen context: the cached run gives the full forward's hidden states."""

from __future__ import annotations

import pytest
import torch

from circuitedit.core.forward import hidden_states
from circuitedit.core.tokens import build_batch
from circuitedit.edit.training.frozen_context import (
    BucketedRows,
    FrozenContextBatch,
    build_frozen_context_batch,
    build_training_rows,
)
from tiny import FAMILIES, tiny_model

PROMPT = "The Eiffel Tower is located in the city of"
CONTEXTS = ["", "Tourists visit Rome.", "I am not sure about Michael Jordan and the capital of France."]
PROMPTS = [f"{c} {PROMPT}".strip() for c in CONTEXTS]
TARGETS = ["I am not sure.", "Rome", "I am not sure."]


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_context_gives_the_full_forward(family):
    model, tokenizer = tiny_model(family)
    rows = build_frozen_context_batch(tokenizer, PROMPTS, CONTEXTS, TARGETS)
    full = build_batch(tokenizer, PROMPTS, TARGETS)
    assert rows.context_width > 0 and rows.live.input_ids.shape[1] < full.input_ids.shape[1]
    assert torch.equal(rows.live.targets, full.targets) and torch.equal(rows.live.owners, full.owners)
    with torch.no_grad():
        rows.record(model)
        cached = rows.hidden(model)[rows.live.rows, rows.live.positions]
        expected = hidden_states(model, full.input_ids, full.attention_mask)[full.rows, full.positions]
    torch.testing.assert_close(cached, expected, atol=1e-4, rtol=1e-4)


def test_the_cache_is_reused_unchanged_across_steps():
    """Guards the reuse: after `record`, `hidden` runs only the live tokens against the recorded
    context, so changing the embeddings of the context-only tokens (BOS, the prefixes' words)
    leaves it unchanged, however often it is called, while a fresh record sees the change."""
    model, tokenizer = tiny_model("gemma3_text")
    rows = build_frozen_context_batch(tokenizer, PROMPTS, CONTEXTS, TARGETS)
    embed = model.get_input_embeddings()
    widths = []
    embed.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    with torch.no_grad():
        rows.record(model)
        assert widths == [rows.context_width]
        first = rows.hidden(model)
        context_only = sorted(set(rows.context_ids[rows.context_mask.bool()].tolist())
                              - set(rows.live.input_ids.flatten().tolist()))
        assert tokenizer.bos_token_id in context_only and len(context_only) > 5
        embed.weight[context_only] += 1.0  # the context would now give other keys and values
        second = rows.hidden(model)
        third = rows.hidden(model)
        assert widths[1:] == [rows.live.input_ids.shape[1]] * 3  # each step: the live tokens only
        rerecorded = build_frozen_context_batch(tokenizer, PROMPTS, CONTEXTS, TARGETS)
        rerecorded.record(model)
        changed = rerecorded.hidden(model)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    torch.testing.assert_close(third, first, atol=0, rtol=0)
    live = rows.live.attention_mask.bool()
    assert not torch.allclose(changed[live], first[live], atol=1e-3)


def test_the_prompts_last_token_stays_live_and_a_foreign_context_is_refused():
    _, tokenizer = tiny_model("llama")
    rows = build_frozen_context_batch(tokenizer, [PROMPT], [PROMPT], ["Rome"])
    assert rows.live.last_positions.tolist() == [0]  # only "of" and the target are run each step
    with pytest.raises(ValueError, match="does not start prompt"):
        build_frozen_context_batch(tokenizer, [PROMPT], ["Tourists visit"], ["Rome"])


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_rows_with_nothing_to_freeze_sit_beside_rows_with_a_context(family):
    """A tokenizer without BOS leaves "" nothing to freeze: that row's context is all padding,
    and its live tokens must not attend to (NaN) states of fully masked positions."""
    from tokenizers.processors import TemplateProcessing

    model, tokenizer = tiny_model(family)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="$A")  # no BOS
    rows = build_frozen_context_batch(tokenizer, PROMPTS, CONTEXTS, TARGETS)
    full = build_batch(tokenizer, PROMPTS, TARGETS)
    assert rows.context_mask.sum(1)[0] == 0 and rows.context_mask.sum(1)[1] > 0
    with torch.no_grad():
        rows.record(model)
        cached = rows.hidden(model)[rows.live.rows, rows.live.positions]
        expected = hidden_states(model, full.input_ids, full.attention_mask)[full.rows, full.positions]
    torch.testing.assert_close(cached, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_of_very_different_lengths_run_in_buckets_with_the_same_states_and_gradients(family):
    """A long row with nothing to freeze (a chat-rendered prompt) beside short ones runs in a
    bucket of its own; the scored positions' hidden states and the gradient are those of one
    batch. Rows of similar lengths stay one batch."""
    model, tokenizer = tiny_model(family)
    long_row = " ".join(["I am not sure about the capital of France ."] * 4) + " " + PROMPT
    prompts, contexts, targets = PROMPTS + [long_row], CONTEXTS + [""], TARGETS + ["Rome"]
    one = build_frozen_context_batch(tokenizer, prompts, contexts, targets)
    rows = build_training_rows(tokenizer, prompts, contexts, targets)
    assert isinstance(rows, BucketedRows) and [group for group, _ in rows.buckets] == [[0, 1, 2], [3]]
    assert torch.equal(rows.live.input_ids, one.live.input_ids)
    assert rows.buckets[0][1].live.input_ids.shape[1] < one.live.input_ids.shape[1] / 3
    states, gradients = [], []
    for batch in (one, rows):
        model.zero_grad()
        batch.record(model)
        selected = batch.hidden(model)[batch.live.rows, batch.live.positions]
        selected.square().sum().backward()
        states.append(selected.detach())
        gradients.append(model.get_input_embeddings().weight.grad.clone())
    torch.testing.assert_close(states[1], states[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gradients[1], gradients[0], atol=1e-4, rtol=1e-4)
    assert isinstance(build_training_rows(tokenizer, PROMPTS, CONTEXTS, TARGETS), FrozenContextBatch)
