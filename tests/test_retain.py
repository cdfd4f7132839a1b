"""The retain set's length buckets and the retain term's gradient (exact, and lazy)."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch

from circuitedit.edit.base import freeze
from circuitedit.edit.ia3 import attach_ia3, ia3_vectors
from circuitedit.edit.training.loop import RetainTerm, StageConfig
from circuitedit.edit.training.retain import RetainSet, length_buckets
from circuitedit.models import HEAD, MLP, Component, get_adapter
from tiny import FAMILIES, tiny_model

PROMPTS = ["The Louvre is located in the city of", "Bees make", "Water is", "The capital of France is",
           "Michael Jordan plays the sport of", "It is", "Charles Dickens was born in the city of London and"]


def _padded_cost(groups, lengths, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


def _best_cost(lengths, overhead):
    """Brute force over every grouping of the sorted rows into runs."""
    ordered = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        groups, current = [], [ordered[0]]
        for index, cut in zip(ordered[1:], cuts, strict=True):
            if cut:
                groups.append(current)
                current = []
            current.append(index)
        groups.append(current)
        best = min(best, _padded_cost(groups, lengths, overhead))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_length_buckets_are_an_optimal_partition(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 16) for _ in range(rng.randint(1, 9))]
    overhead = rng.choice([0, 8, 32, 1000])
    groups = length_buckets(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert _padded_cost(groups, lengths, overhead) == _best_cost(lengths, overhead)


def test_length_buckets_extremes():
    assert length_buckets([5, 5, 5], overhead=0) == [[0, 1, 2]]
    assert len(length_buckets([3, 20, 3, 20], overhead=10**6)) == 1
    assert [sorted(g) for g in length_buckets([3, 20, 3, 20], overhead=0)] == [[0, 2], [1, 3]]


@pytest.mark.parametrize("family", FAMILIES)
def test_bucketed_retain_logits_equal_one_padded_batch(family):
    """Buckets change how rows are batched, never what a row's next-token logits are."""
    model, tokenizer = tiny_model(family)
    model = model.float()
    retain = RetainSet.from_model(model, tokenizer, PROMPTS, pinned=2)
    rows = torch.tensor([6, 0, 3, 1, 5])
    bucketed = retain.logits(model, rows)
    for k, row in enumerate(rows.tolist()):
        alone = retain.logits(model, torch.tensor([row]))  # one row: no padding at all
        torch.testing.assert_close(bucketed[k], alone[0], rtol=1e-4, atol=1e-4)
    assert retain.prompts[:2] == PROMPTS[:2]  # pinned prompts first, as given
    rotating = [len(tokenizer(p)["input_ids"]) for p in retain.prompts[2:]]
    assert rotating == sorted(rotating)  # the others in length order


def _peft_on(family, off_reference=True):
    model, tokenizer = tiny_model(family)
    model = model.float()
    retain = RetainSet.from_model(model, tokenizer, PROMPTS, pinned=2)
    working = copy.deepcopy(model)
    freeze(working)
    peft_model = attach_ia3(working, get_adapter(working), [Component(0, HEAD, 1), Component(1, MLP)])
    params = list(ia3_vectors(peft_model).values())
    if off_reference:  # so the KL has a gradient
        _perturb(params, 0.3)
    return peft_model.get_base_model(), params, retain


@torch.no_grad()
def _perturb(params, scale, generator=None):
    for p in params:
        p.mul_(1 + scale * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("family", ["gemma3_text", "phi3", "gpt2"])
def test_retain_term_adds_the_exact_gradient_of_its_loss(family):
    torch.manual_seed(0)
    model, params, retain = _peft_on(family)
    config = StageConfig(kl_weight=2.0, retain_batch=2, shortlist_top_k=None)
    rows = retain.rows_for_step(0, config.retain_batch)
    kl, _ = retain.kl_and_leak(model, rows)
    expected = torch.autograd.grad(config.kl_weight * kl, params, allow_unused=True)
    term = RetainTerm(retain, config, params, None)
    value = term.add_gradient(model)
    assert value == pytest.approx(float(config.kl_weight * kl.detach()), rel=1e-5)
    for param, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, grad)
    # The head mask holds for a gradient taken with autograd.grad: unselected heads stay at 0.
    adapter = get_adapter(model)
    head_vector = params[0] if params[0].numel() == adapter.num_heads(model) * adapter.head_dim(model) else params[1]
    for head in range(adapter.num_heads(model)):
        part = head_vector.grad.reshape(-1)[adapter.head_slice(model, head)]
        assert (part.abs().sum() > 0) == (head == 1), head


def test_lazy_retain_term_evaluates_every_k_steps_and_extrapolates():
    torch.manual_seed(0)
    model, params, retain = _peft_on("gemma3_text")
    config = StageConfig(kl_weight=1.0, retain_every=2)
    term = RetainTerm(retain, config, params, None)
    grads = []
    for _ in range(5):
        for p in params:
            p.grad = None
        term.add_gradient(model)
        grads.append([p.grad.clone() for p in params])
        with torch.no_grad():
            for p in params:
                p.add_(0.01)  # the params move between steps, as in training
    assert term.evaluations == 3  # steps 0, 2, 4
    for g0, g1, g2, g3 in zip(grads[0], grads[1], grads[2], grads[3], strict=True):
        torch.testing.assert_close(g1, g0)  # one evaluation so far: reused
        torch.testing.assert_close(g3, g2 + 0.5 * (g2 - g0))  # half a span past the last one


def test_lazy_retain_term_starting_at_the_reference_extrapolates_from_zero():
    model, params, retain = _peft_on("gemma3_text")
    term = RetainTerm(retain, StageConfig(kl_weight=1.0, retain_every=2), params, None)
    term.known_zero()
    seen = []
    for _ in range(4):
        for p in params:
            p.grad = torch.zeros_like(p)
        term.add_gradient(model)
        seen.append([p.grad.clone() for p in params])
    assert term.evaluations == 1  # step 2 only: step 0 is known, 1 and 3 are estimated
    for g0, g1, g2, g3 in zip(*seen, strict=True):
        assert torch.equal(g0, torch.zeros_like(g0)) and torch.equal(g1, torch.zeros_like(g1))
        torch.testing.assert_close(g3, 1.5 * g2)


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_shortlisted_kl_is_zero_at_the_reference_and_at_most_the_full_kl_off_it(family):
    edited, params, retain = _peft_on(family, off_reference=False)
    reference = retain.shortlisted(edited, top_k=8)
    assert len(reference.shortlist.tokens) < edited.config.vocab_size
    kl, _ = retain.kl_and_leak(edited, shortlisted=reference)
    grads = torch.autograd.grad(kl, params)
    assert float(kl.detach()) == pytest.approx(0.0, abs=1e-5)
    assert all(float(g.abs().max()) < 1e-5 for g in grads)  # the bucket keeps the optimum in place
    _perturb(params, 0.5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = retain.kl_and_leak(edited)
        bucketed, _ = retain.kl_and_leak(edited, shortlisted=reference)
        everything = retain.shortlisted(edited, top_k=edited.config.vocab_size)
        exact, _ = retain.kl_and_leak(edited, shortlisted=everything)
    # merging tokens into the bucket can only hide divergence (up to the tail estimate's error)
    assert 0 < float(bucketed) <= 1.1 * float(full)
    assert float(exact) == pytest.approx(float(full), rel=1e-4, abs=1e-5)  # nothing left in the bucket
