"""ROME on tiny random models of every family: the rank-one update's algebra, the weight delta
as stored (Conv1D transposed), its file round trip, and the editor end to end."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from circuitedit.core.forward import object_logprobs
from circuitedit.data.requests import EditRequest
from circuitedit.edit.base import TrainingContext
from circuitedit.edit.covariance import CorpusSpec, layer_covariance
from circuitedit.edit.deltas import WeightDelta
from circuitedit.edit.keyed import KeyedConfig
from circuitedit.edit.rome import layer_delta, rank_one_update, rome
from circuitedit.models import MLP, Component, get_adapter
from tiny import FAMILIES, keyed_edit, tiny_model

REQUEST = EditRequest(subject="Eiffel Tower", prompt="The {} is located in the city of", old_object="Paris",
                      new_object="Rome", paraphrases=["Tourists visit the {} in the city of"])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_update_maps_the_key_to_its_value_and_leaves_c_orthogonal_keys(family):
    model, tokenizer = tiny_model(family)
    covariance = layer_covariance(model, tokenizer, 1, CorpusSpec(tokens=96, length=12), cache=False)
    d_k = covariance.shape[0]
    generator = torch.Generator().manual_seed(0)
    key, delta = torch.randn(d_k, generator=generator), torch.randn(64, generator=generator)
    update = rank_one_update(key, delta, covariance, ridge=1e-3)
    torch.testing.assert_close(update @ key, delta, rtol=1e-4, atol=1e-5)
    # a key orthogonal to k* in the C⁻¹ metric: uᵀk = 0, u = (C + λI)⁻¹ k*
    c = covariance.double() + 1e-3 * covariance.double().diagonal().mean() * torch.eye(d_k, dtype=torch.float64)
    u = torch.linalg.solve(c, key.double())
    other = torch.randn(d_k, generator=generator, dtype=torch.float64)
    other = other - (u @ other) / (u @ u) * u
    assert float((update.double() @ other).abs().max()) < 1e-5

    adapter = get_adapter(model)
    module = model.get_submodule(adapter.mlp_out_name(1))
    with torch.no_grad():
        before = module(key[None])[0]
        layer_delta("rome", adapter, 1, update).apply(model)
        after = module(key[None])[0]
    torch.testing.assert_close(after - before, delta, rtol=1e-4, atol=1e-4)


def test_a_weight_delta_round_trips_through_its_file_and_subtracts_back(tmp_path):
    model, _ = tiny_model("gpt2")
    adapter = get_adapter(model)
    name = f"{adapter.mlp_out_name(0)}.weight"
    original = model.get_parameter(name).detach().clone()
    delta = layer_delta("rome", adapter, 0, torch.randn(64, original.shape[0]))
    delta.save(tmp_path / "rome")
    loaded = WeightDelta.load(tmp_path / "rome")
    assert loaded.name == "rome" and loaded.details == {"layer": 0}
    assert torch.equal(loaded.tensors[name], delta.tensors[name]) and loaded.tensors[name].shape == original.shape
    loaded.apply(model)
    assert not torch.equal(model.get_parameter(name), original)
    loaded.apply(model, sign=-1.0)
    torch.testing.assert_close(model.get_parameter(name).detach(), original, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_rome_makes_the_new_object_win_on_the_edit_prompt(family):
    model, tokenizer = tiny_model(family)
    prompts = [REQUEST.text, REQUEST.fill(REQUEST.paraphrases[0]), f"Tourists visit Rome. {REQUEST.text}"]
    context = TrainingContext(prompts=prompts, retain=None, old_token=0)
    # a random model's outputs are tiny: no norm penalty and a loose bound, so the search can move it
    config = SimpleNamespace(keyed=KeyedConfig(value_steps=40, weight_decay=0.0, clamp_norm=100.0, covariance_tokens=96,
                                               cache_covariance=False))
    lp = lambda m: object_logprobs(m, tokenizer, [REQUEST.text] * 2, ["Rome", "Paris"])  # noqa: E731
    before = lp(model)
    # layer 0: a shift at the last of two layers cannot reach the later positions it must move
    outcome = rome(model, tokenizer, REQUEST, [Component(0, MLP), Component(1, MLP)], context, config)
    after = lp(outcome.model)
    assert outcome.stages[0].name == "value" and outcome.stages[0].losses[-1] < outcome.stages[0].losses[0]
    assert after[0] > before[0] and after[0] > after[1]
    (artifact,) = outcome.adapters
    assert artifact.details == {"layer": 0} and list(artifact.tensors) == ["model.layers.0.mlp.down_proj.weight"]


def test_a_rome_edit_through_the_pipeline_saves_a_delta_that_ask_and_audit_read_back(tmp_path):
    """`edit --method rome` end to end on a tiny model: the delta file (not a model) is written,
    and the edit directory's reader rebuilds the edited weights from it."""
    from circuitedit.workflows.audit_files import load_edit
    from circuitedit.workflows.outputs import load_edited

    model, result, out = keyed_edit(tmp_path, "gemma3_text", "rome", REQUEST)
    assert [s.name for s in result.outcome.stages] == ["value"] and result.metrics["efficacy"] is not None
    assert (out / "adapters" / "rome" / "delta.safetensors").exists() and not (out / "model").exists()
    name = "model.layers.0.mlp.down_proj.weight"
    edited, _, _ = load_edited(out, dtype="fp32", device="cpu")
    assert torch.equal(edited.get_parameter(name), result.model.get_parameter(name))
    assert not torch.equal(edited.get_parameter(name), model.get_parameter(name))  # the base is untouched
    base, _, request, stage1, stage2, _ = load_edit(out, dtype="fp32", device="cpu")
    assert stage1 is None and request.subject == REQUEST.subject
    assert torch.equal(stage2.get_parameter(name), result.model.get_parameter(name))


def test_key_covariances_are_computed_in_one_pass_and_read_back_from_the_cache(tmp_path, monkeypatch):
    from circuitedit.edit import covariance

    model, tokenizer = tiny_model("llama")
    spec = CorpusSpec(tokens=48, length=12)
    first = covariance.layer_covariances(model, tokenizer, [0, 1], spec, root=tmp_path)
    assert sorted(first) == [0, 1] and first[0].shape == (128, 128)
    torch.testing.assert_close(first[1], first[1].T)  # a second moment is symmetric
    monkeypatch.setattr(covariance, "sampled_texts", lambda *a, **k: pytest.fail("sampled again"))
    again = covariance.layer_covariances(model, tokenizer, [1, 0], spec, root=tmp_path)
    assert all(torch.equal(first[layer], again[layer]) for layer in (0, 1))
    model.get_parameter("model.layers.0.mlp.up_proj.weight").data.mul_(2)  # another model: another key
    with pytest.raises(pytest.fail.Exception, match="sampled again"):
        covariance.layer_covariances(model, tokenizer, [0], spec, root=tmp_path)


def test_rome_unlearn_then_learn_saves_both_stages_and_the_audit_rebuilds_them(tmp_path):
    """The two-stage recipe on ROME: stage 1 the uncertainty answer, stage 2 the new object, at one
    layer; the audit's stage-1 model is the base plus the first delta, stage 2 both."""
    from circuitedit.workflows.audit_files import load_edit

    _, result, out = keyed_edit(tmp_path, "llama", "rome-unlearn-then-learn", REQUEST, uncertainty="I am not sure .")
    assert [s.name for s in result.outcome.stages] == ["unlearn", "learn"]
    name = "model.layers.0.mlp.down_proj.weight"
    base, _, _, stage1, stage2, meta = load_edit(out, dtype="fp32", device="cpu")
    assert meta["saved_stages"] == ["unlearn", "learn"]
    first = result.outcome.adapters[0].tensors[name]
    torch.testing.assert_close(stage1.get_parameter(name), base.get_parameter(name) + first)
    assert torch.equal(stage2.get_parameter(name), result.model.get_parameter(name))
