"""Chunked LM-head reductions: the same values and gradients as the full logits."""

from __future__ import annotations

import pytest
import torch

from circuitedit.core import head as reductions_module
from circuitedit.core.forward import logits_from_hidden
from circuitedit.core.head import head_reductions
from tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_reductions_match_the_full_logits(family, softcap, monkeypatch):
    monkeypatch.setattr(reductions_module, "CHUNK_COLUMNS", 7)  # many chunks, the last one ragged
    model, _ = tiny_model(family)
    model.config.final_logit_softcapping = softcap
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, model.get_output_embeddings().weight.shape[1], generator=generator)
    pick = torch.randint(0, vocab, (5, 3), generator=generator)
    pick[0, 0] = logits_from_hidden(model, hidden[:1]).argmax()  # one pick is its row's argmax
    reference = torch.log_softmax(torch.randn(4, vocab, generator=generator), -1)
    weight_rows = torch.tensor([3, 0, 1, 1, 2])
    coefficients = torch.randn(5, 3, generator=generator), torch.randn(5, generator=generator)

    def loss_of(lse, picked, weighted):
        return (lse * coefficients[1]).sum() + (picked * coefficients[0]).sum() + weighted.square().sum()

    full_hidden = hidden.clone().requires_grad_(True)
    logits = logits_from_hidden(model, full_hidden)  # (5, V)
    full = (logits.logsumexp(-1), logits.gather(1, pick), (reference[weight_rows].exp() * logits).sum(-1))
    loss_of(*full).backward()

    chunked_hidden = hidden.clone().requires_grad_(True)
    out = head_reductions(model, chunked_hidden, pick, reference, weight_rows)
    loss_of(out.lse, out.picked, out.weighted).backward()

    for mine, theirs in zip((out.lse, out.picked, out.weighted), full, strict=True):
        torch.testing.assert_close(mine, theirs.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.weight_mass, reference[weight_rows].exp().sum(-1))
    torch.testing.assert_close(chunked_hidden.grad, full_hidden.grad, rtol=1e-4, atol=1e-5)
    top = logits.detach().topk(2, -1)
    torch.testing.assert_close(out.top_values, top.values)
    assert out.top_index.tolist() == top.indices[:, 0].tolist()
    for column in range(3):
        target = logits.detach().gather(1, pick[:, column:column + 1]).squeeze(1)
        others = logits.detach().scatter(1, pick[:, column:column + 1], float("-inf")).max(-1).values
        torch.testing.assert_close(out.margins(column), target - others)
    assert float(out.margins(0)[0]) > 0  # the argmax pick leads the rest


def test_without_weights_there_is_no_weighted_sum():
    model, _ = tiny_model("llama")
    hidden = torch.randn(2, model.config.hidden_size, requires_grad=True)
    out = head_reductions(model, hidden, torch.tensor([[1], [2]]))
    assert out.weighted is None and out.weight_mass is None
    out.log_probs().sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def test_ties_go_to_the_lowest_token_id_as_argmax(monkeypatch):
    monkeypatch.setattr(reductions_module, "CHUNK_COLUMNS", 7)
    model, _ = tiny_model("llama")
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.zero_()
        head[3] = head[9] = head[12] = 1.0  # three equal maxima, in chunks 0 and 1
    hidden = torch.ones(2, head.shape[1])
    out = head_reductions(model, hidden)
    assert out.top_index.tolist() == [3, 3] == logits_from_hidden(model, hidden).argmax(-1).tolist()
    assert out.top_values[:, 0].tolist() == out.top_values[:, 1].tolist()  # a tie has margin 0


def test_shortlisted_reductions_with_the_tail_equal_the_full_ones():
    from circuitedit.edit.training.shortlisted_head import ShortlistedHead

    model, _ = tiny_model("gemma3_text")
    model = model.float()
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, model.config.hidden_size, generator=generator)
    pick = torch.tensor([[5], [7], [9], [11]])
    shortlisted = ShortlistedHead(model, pick, top_k=6, full_every=3)
    first, exact = shortlisted(hidden)
    assert exact and shortlisted.shortlist is not None
    assert len(shortlisted.shortlist.tokens) <= 4 * 6 + 4 < model.config.vocab_size
    second, exact = shortlisted(hidden)  # the same hidden states: the fixed tail is exact
    assert not exact
    torch.testing.assert_close(second.lse, first.lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second.picked, first.picked)
    torch.testing.assert_close(second.margins(0), first.margins(0))
    assert second.top_index.tolist() == first.top_index.tolist()
    shortlisted(hidden)
    assert shortlisted(hidden)[1]  # every `full_every` shortlisted steps, a full pass
    assert shortlisted.full_passes == 2
    with pytest.raises(ValueError, match="shortlist"):
        head_reductions(model, hidden, torch.full((4, 1), 1), shortlist=reductions_module.Shortlist.of(
            model, torch.tensor([2, 3])))


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_top_is_the_argmax_and_the_top_two_of_the_full_logits(softcap, dtype, monkeypatch):
    monkeypatch.setattr(reductions_module, "CHUNK_COLUMNS", 7)
    model, _ = tiny_model("gemma3_text")
    model.config.final_logit_softcapping = softcap
    model.to(dtype)
    hidden = torch.randn(6, model.config.hidden_size, generator=torch.Generator().manual_seed(1)).to(dtype)
    head = model.get_output_embeddings()
    head.weight.data[11] = head.weight.data[4]  # an exact tie: the lower id wins, as argmax
    hidden[5] = head.weight.data[4] * 4
    logits = logits_from_hidden(model, hidden)
    index, values = reductions_module.head_top(model, hidden, k=2)
    assert index.tolist() == logits.argmax(-1).tolist() and int(index[5]) == 4
    torch.testing.assert_close(values, logits.topk(2, -1).values)
    one_index, one_value = reductions_module.head_top(model, hidden)
    assert torch.equal(one_index, index) and torch.equal(one_value[:, 0], values[:, 0])
