"""Core localization: attribution patching agrees with exact activation patching; the
patching plumbing (subject positions, site hooks, selection) is right."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from circuitedit import EditRequest
from circuitedit.localize import LocalizationError, LocalizationResult, LocalizeConfig, localize
from circuitedit.localize.attribution import attribution_scores
from circuitedit.localize.base import ComponentScore
from circuitedit.localize.corruption import localization_setups, subject_token_positions
from circuitedit.models import HEAD, MLP, Component, get_adapter
from circuitedit.models.components import all_components
from circuitedit.models.hooks import site_hooks
from tiny import FAMILIES, tiny_model

MIN_SPEARMAN = 0.8
# Corruption subjects for the agreement tests, pinned (not the package's subject pool, which keeps
# growing) so the measured correlations do not move when the data files change. Every word is in
# the tiny tokenizer's fixed vocabulary; all are two tokens long, like "Eiffel Tower".
POOL = ["Michael Jordan", "Charles Dickens", "Mount Fuji", "Foo Bar", "Baz Qux", "Qux Foo", "Bar Baz",
        "Rome Berlin", "London Paris", "France Italy", "Germany France"]
# A subject no pool entry matches in token length, so corruption falls back to Gaussian noise.
NOISE_REQUEST = dict(subject="Foo Bar Baz Qux Foo Bar Baz", prompt="{} is located in the city of",
                     old_object="Paris", new_object="Rome")


@pytest.fixture
def pinned_pool(monkeypatch):
    import circuitedit.localize.corruption as corruption

    monkeypatch.setattr(corruption, "subject_pool", lambda: list(POOL))


def _spearman(model, tokenizer, request) -> tuple[float, LocalizationResult, LocalizationResult]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attribution = localize(model, tokenizer, request, LocalizeConfig(method="attribution"))
    activation = localize(model, tokenizer, request, LocalizeConfig(method="activation"))
    for key, value in model.state_dict().items():  # localization never changes the model
        assert torch.equal(value, state[key]), key
    att = {(s.component, s.position): s.score for s in attribution.scores}
    act = {(s.component, s.position): s.score for s in activation.scores}
    assert set(att) == set(act)
    comps = set(get_adapter(model).all_layer_components(model))
    assert {c for c, _ in att} == comps and {p for _, p in att} == {"subject", "last"}
    keys = sorted(att)
    rho = float(spearmanr([att[k] for k in keys], [act[k] for k in keys]).statistic)
    return rho, attribution, activation


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_agrees_with_activation_patching(family, eiffel, pinned_pool, record_property):
    model, tokenizer = tiny_model(family)
    rho, attribution, activation = _spearman(model, tokenizer, eiffel)
    record_property(f"spearman_{family}", round(rho, 4))
    print(f"spearman attribution vs activation [{family}, {attribution.corruption}]: {rho:.4f}")
    assert attribution.corruption.startswith("subject swap")
    assert attribution.corruption == activation.corruption
    assert rho >= MIN_SPEARMAN, f"{family}: Spearman {rho:.3f} < {MIN_SPEARMAN}"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attribution_agrees_under_noise_corruption(family, pinned_pool, record_property):
    model, tokenizer = tiny_model(family)
    rho, attribution, _ = _spearman(model, tokenizer, EditRequest(**NOISE_REQUEST))
    record_property(f"spearman_noise_{family}", round(rho, 4))
    print(f"spearman attribution vs activation [{family}, {attribution.corruption}]: {rho:.4f}")
    assert attribution.corruption.startswith("subject noise")
    assert rho >= MIN_SPEARMAN, f"{family} (noise): Spearman {rho:.3f} < {MIN_SPEARMAN}"


@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_is_the_exact_first_order_term(family, eiffel, pinned_pool):
    """Attribution score = directional derivative of the metric along (corrupt - clean) at each
    component's slice and positions, checked by central finite differences in float64: any
    sign, position or slicing error in attribution.py or activation.py shows up here."""
    model, tokenizer = tiny_model(family)
    model = model.double()
    adapter = get_adapter(model)
    setup = localization_setups(model, tokenizer, eiffel, LocalizeConfig())[0]
    scores = {(s.component, s.position): s.score for s in attribution_scores(model, adapter, setup).scores}
    assert max(abs(v) for v in scores.values()) > 1e-2  # not trivially all zero
    acts: dict = {"clean": {}, "corrupt": {}}
    with torch.no_grad():
        with site_hooks(model, adapter, lambda site, a: acts["corrupt"].__setitem__(site, a)):
            setup.run(model, setup.corrupt_ids, corrupted=True)
        with site_hooks(model, adapter, lambda site, a: acts["clean"].__setitem__(site, a)):
            setup.run(model, setup.clean_ids)
    width, eps = adapter.head_dim(model), 1e-3
    for (comp, group), score in scores.items():
        site = (comp.layer, comp.kind)
        dims = slice(comp.head * width, (comp.head + 1) * width) if comp.kind == HEAD else slice(None)
        positions = setup.groups[group]
        direction = acts["corrupt"][site][0, positions, dims] - acts["clean"][site][0, positions, dims]
        values = []
        for step in (eps, -eps):
            def nudge(s, a, step=step, site=site, positions=positions, dims=dims, direction=direction):
                if s != site:
                    return None
                a = a.clone()
                a[0, positions, dims] += step * direction
                return a

            with torch.no_grad(), site_hooks(model, adapter, nudge):
                values.append(setup.run(model, setup.clean_ids).item())
        derivative = (values[0] - values[1]) / (2 * eps)
        assert score == pytest.approx(derivative, abs=2e-4, rel=1e-2), (comp.name, group)


def test_paraphrases_are_averaged(eiffel):
    model, tokenizer = tiny_model("llama")
    request = EditRequest(**{**eiffel.to_dict(), "paraphrases": ["Tourists visit the Eiffel Tower in the city of"]})
    both = localize(model, tokenizer, request, LocalizeConfig(method="activation"))
    first = localize(model, tokenizer, request, LocalizeConfig(method="activation", use_paraphrases=False))
    assert both.details["prompts"] == 2 and first.details["prompts"] == 1
    assert len(both.scores) == len(first.scores) == 2 * 10


def test_subject_token_positions(tokenizer):
    ids, positions = subject_token_positions(tokenizer, "The {} is located in the city of", "Eiffel Tower")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<bos>"
    assert [tokens[i] for i in positions] == ["Eiffel", "Tower"]
    ids, positions = subject_token_positions(tokenizer, "{} plays the sport of", "Michael Jordan")
    assert [tokenizer.convert_ids_to_tokens(ids)[i] for i in positions] == ["Michael", "Jordan"]
    with pytest.raises(LocalizationError, match="no tokens"):
        subject_token_positions(tokenizer, "The {} is located in", "")


@pytest.mark.parametrize("family", ["gpt2", "phi3"])
def test_site_hooks_see_every_site_and_clean_up(family):
    model, _ = tiny_model(family)
    adapter = get_adapter(model)
    shapes = {}

    def record(site, act):
        shapes[site] = tuple(act.shape)

    with torch.no_grad(), site_hooks(model, adapter, record):
        model(input_ids=torch.tensor([[2, 5, 6, 7, 8]]))
    hidden = model.config.hidden_size
    assert shapes == {(layer, kind): (1, 5, hidden) for layer in range(2) for kind in (HEAD, MLP)}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

    def zero_heads(site, act):
        return torch.zeros_like(act) if site == (1, HEAD) else None

    with torch.no_grad():
        clean = model(input_ids=torch.tensor([[2, 5, 6, 7]])).logits
        with site_hooks(model, adapter, zero_heads):
            patched = model(input_ids=torch.tensor([[2, 5, 6, 7]])).logits
        again = model(input_ids=torch.tensor([[2, 5, 6, 7]])).logits
    assert not torch.allclose(clean, patched) and torch.equal(clean, again)


def _result(values: dict[str, tuple[float, float]]) -> LocalizationResult:
    scores = []
    for name, (subject, last) in values.items():
        comp = Component.parse(name)
        scores += [ComponentScore(comp, "subject", subject), ComponentScore(comp, "last", last)]
    return LocalizationResult("test", scores)


def test_ranking_and_selection():
    result = _result({"L0.H0": (0.1, -0.9), "L0.H1": (0.5, 0.0), "L0.MLP": (2.0, 0.1),
                      "L1.H0": (0.0, 0.0), "L1.MLP": (-0.3, 0.2)})
    assert result.component_scores()[Component.parse("L0.H0")] == pytest.approx(0.9)
    ranked = [c.name for c, _ in result.ranked()]
    assert ranked == ["L0.MLP", "L0.H0", "L0.H1", "L1.MLP", "L1.H0"]
    assert [c.name for c in result.select(top_k=2)] == ["L0.MLP", "L0.H0"]
    assert [c.name for c in result.select(top_k=2, kinds="heads")] == ["L0.H0", "L0.H1"]
    assert [c.name for c in result.select(top_k=5, kinds="mlps")] == ["L0.MLP", "L1.MLP"]
    # total |effect| 3.7: 2.0 < 0.6 * 3.7 = 2.22 <= 2.0 + 0.9
    assert [c.name for c in result.select(fraction=0.6)] == ["L0.MLP", "L0.H0"]
    data = result.to_dict()
    assert data["method"] == "test" and len(data["scores"]) == 10


def test_all_components_order():
    comps = all_components(2, 2)
    assert [c.name for c in comps] == ["L0.H0", "L0.H1", "L0.MLP", "L1.H0", "L1.H1", "L1.MLP"]
