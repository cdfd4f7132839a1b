"""MEMIT and AlphaEdit on tiny random models of every family: each layer's update algebra (MEMIT
maps its key to the residual, AlphaEdit leaves the preserved keys' outputs alone), the value
through Gemma-3's post-feedforward norm, a batch of facts spread over two layers, and both editors
end to end with their weight delta saved and read back."""

from __future__ import annotations

import json

import pytest
import torch

from circuitedit.core.forward import hidden_states, object_logprobs
from circuitedit.core.tokens import encode_text, pad_rows, padding_id
from circuitedit.data.requests import EditRequest
from circuitedit.edit.alphaedit import (
    alphaedit_layer_update,
    alphaedit_solver,
    nullspace_projection,
)
from circuitedit.edit.covariance import (
    CorpusSpec,
    key_second_moments,
    layer_covariance,
    layer_covariances,
)
from circuitedit.edit.keyed import KeyedConfig
from circuitedit.edit.keyvalue import weight_delta
from circuitedit.edit.memit import edited_layers, memit_layer_update, memit_update, mlp_value
from circuitedit.models import MLP, Component, get_adapter
from circuitedit.models.hooks import mlp_key_hook
from tiny import FAMILIES, keyed_edit, tiny_model

REQUEST = EditRequest(subject="Eiffel Tower", prompt="The {} is located in the city of", old_object="Paris",
                      new_object="Rome", paraphrases=["Tourists visit the {} in the city of"])
PRESERVED = ["The capital of France is Paris .", "Michael Jordan plays basketball .", "Where is Mount Fuji ?"]


def preserved_keys(model, tokenizer, layer: int) -> torch.Tensor:
    """(n, d_k): every token's key of `layer` over PRESERVED (fewer keys than d_k: C has a null space)."""
    ids, mask = pad_rows([encode_text(tokenizer, t) for t in PRESERVED], padding_id(tokenizer), "right", "cpu")
    with torch.no_grad(), mlp_key_hook(model, get_adapter(model), layer) as keys:
        hidden_states(model, ids, mask)
    return keys[0][mask.bool()].double()


@pytest.mark.parametrize("family", FAMILIES)
def test_alphaedit_leaves_the_preserved_keys_outputs_unchanged(family):
    model, tokenizer = tiny_model(family)
    moments, count = key_second_moments(model, tokenizer, [1], PRESERVED)
    k0 = preserved_keys(model, tokenizer, 1)
    assert count == len(k0) < k0.shape[1]
    torch.testing.assert_close(moments[1], k0.T @ k0 / len(k0))  # C is built from exactly these keys
    projection = nullspace_projection(moments[1], threshold=1e-2)
    assert float((projection @ k0.T).abs().max()) < 1e-8 * float(k0.abs().max())  # P K₀ = 0
    generator = torch.Generator().manual_seed(0)
    key, residual = torch.randn(k0.shape[1], 1, generator=generator), torch.randn(64, 1, generator=generator)
    alpha = 0.1
    update = alphaedit_layer_update(key, residual, projection, alpha)
    assert float((update.double() @ k0.T).abs().max()) < 1e-5 * float(update.abs().max())  # ΔW K₀ ≈ 0
    # the new key moves by R·q/(α + q), q = kᵀPk (Sherman-Morrison on the rank-one system)
    q = float(key.double().T @ projection @ key.double())
    torch.testing.assert_close(update @ key, residual * q / (alpha + q), rtol=1e-4, atol=1e-5)

    adapter = get_adapter(model)
    module = model.get_submodule(adapter.mlp_out_name(1))
    with torch.no_grad():
        before_k0, before = module(k0.float()), module(key.T)[0]
        weight_delta("alphaedit", adapter, {1: update}, {}).apply(model)
        after_k0, after = module(k0.float()), module(key.T)[0]
    torch.testing.assert_close(after_k0, before_k0, rtol=0, atol=1e-5)
    torch.testing.assert_close(after - before, (update @ key)[:, 0], rtol=1e-4, atol=1e-4)


def test_alphaedit_keeps_earlier_edits_keys_too():
    """K_p K_pᵀ of earlier edits enters the system: their keys move far less than without it."""
    generator = torch.Generator().manual_seed(1)
    earlier, key, residual = (torch.randn(32, 3, generator=generator), torch.randn(32, 1, generator=generator),
                              torch.randn(8, 1, generator=generator))
    projection = torch.eye(32, dtype=torch.float64)  # all of key space free: only K_p constrains
    free = alphaedit_layer_update(key, residual, projection, 1e-3)
    kept = alphaedit_layer_update(key, residual, projection, 1e-3, previous=1e4 * earlier @ earlier.T)
    assert (kept @ earlier).norm() < 1e-2 * (free @ earlier).norm()


@pytest.mark.parametrize("family", FAMILIES)
def test_memit_on_one_layer_maps_the_key_to_its_residual(family):
    model, tokenizer = tiny_model(family)
    covariance = layer_covariance(model, tokenizer, 1, CorpusSpec(tokens=96, length=12), cache=False).double()
    d_k = covariance.shape[0]
    covariance = covariance + 1e-3 * covariance.diagonal().mean() * torch.eye(d_k, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    key, residual = torch.randn(d_k, 1, generator=generator), torch.randn(64, 1, generator=generator)
    for weight in (1.0, 1e-4):  # ΔW k = r·m/(1+m), m = kᵀ(λC)⁻¹k: toward r, onto it as λ → 0
        update = memit_layer_update(key, residual, weight * covariance)
        m = float(key.double().T @ torch.linalg.solve(weight * covariance, key.double()))
        torch.testing.assert_close(update @ key, residual * m / (1 + m), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(update @ key, residual, rtol=1e-3, atol=1e-3)
    # a key orthogonal to k in the C⁻¹ metric keeps its output
    u = torch.linalg.solve(covariance, key.double())[:, 0]
    other = torch.randn(d_k, generator=generator, dtype=torch.float64)
    other = other - (u @ other) / (u @ u) * u
    assert float((update.double() @ other).abs().max()) < 1e-4 * float((update @ key).abs().max())
    # several facts at once: each key onto its own residual
    keys, residuals = torch.randn(d_k, 3, generator=generator), torch.randn(64, 3, generator=generator)
    torch.testing.assert_close(memit_layer_update(keys, residuals, 1e-6 * covariance) @ keys, residuals,
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_mlp_value_adds_the_residual_through_the_output_norm(family):
    """Llama-like and GPT-2 add the down projection's output to the residual: the value is the
    residual. Gemma-3 normalises it first: the value is the shift whose normalised output moves by
    the residual (exactly, for one reachable target; in least squares over several prompts)."""
    model, tokenizer = tiny_model(family)
    adapter = get_adapter(model)
    keys = preserved_keys(model, tokenizer, 0)[:4].float()
    module = model.get_submodule(adapter.mlp_out_name(0))
    norm_name = adapter.mlp_out_norm_name(0)
    assert (norm_name is not None) == (family == "gemma3_text")
    contribution = (lambda y: y) if norm_name is None else model.get_submodule(norm_name)
    with torch.no_grad():
        outputs = module(keys)
        shift = 0.3 * outputs[0] + 0.3 * outputs[0].norm() * torch.randn(
            outputs.shape[1], generator=torch.Generator().manual_seed(0)) / outputs.shape[1] ** 0.5
        moves = contribution(outputs + shift) - contribution(outputs)  # (P, d): what a shared shift does per prompt
    miss = lambda value: float((contribution(outputs + value) - contribution(outputs) - moves[0]).pow(2).sum())  # noqa: E731
    value = mlp_value(model, adapter, 0, keys[:1], moves[0])
    if norm_name is None:
        assert torch.equal(value, moves[0])
    with torch.no_grad():
        moved = contribution(outputs[:1] + value) - contribution(outputs[:1])
        assert float((moved[0] - moves[0]).norm()) < 0.02 * float(moves[0].norm())
        value = mlp_value(model, adapter, 0, keys, moves[0])
        assert miss(value) <= miss(shift) + 1e-6  # least squares over the four prompts


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_a_batch_of_facts_spread_over_two_layers(family, method):
    """Two facts at once over layers 0 and 1 (the subject ends each prompt, so the residual after
    the last layer reaches the prediction): both new objects gain, the targets are nearly reached."""
    model, tokenizer = tiny_model(family)
    requests = [EditRequest(subject="Eiffel Tower", prompt="Tourists visit the {}", old_object="Paris",
                            new_object="Rome"),
                EditRequest(subject="Mount Fuji", prompt="Tourists visit the {}", old_object="Paris",
                            new_object="Berlin")]
    keyed = KeyedConfig(value_steps=20, weight_decay=0.0, kl_weight=0.0, residual_clamp=100.0, cache_covariance=False)
    covariances = layer_covariances(model, tokenizer, [0, 1], CorpusSpec(tokens=96, length=12), cache=False)
    solve = alphaedit_solver(covariances, keyed)[0] if method == "alphaedit" else None
    lp = lambda m: object_logprobs(m, tokenizer, [r.text for r in requests], [r.new_object for r in requests])  # noqa: E731
    before = lp(model)
    originals = {layer: model.get_parameter(f"{get_adapter(model).mlp_out_name(layer)}.weight").detach().clone()
                 for layer in (0, 1)}
    edit = memit_update(model, tokenizer, requests, [1, 0], covariances, keyed, solve=solve)
    after = lp(model)
    assert sorted(edit.updates) == [0, 1] and len(edit.stages) == 2
    assert all(after > before + 0.5) and all(u < 0.7 for u in edit.unreached)
    # the updates are what was added, in the parameter's own layout (GPT-2's Conv1D transposed)
    delta = weight_delta(method, get_adapter(model), edit.updates, {})
    for layer, original in originals.items():
        name = f"{get_adapter(model).mlp_out_name(layer)}.weight"
        assert delta.tensors[name].shape == original.shape
        torch.testing.assert_close(model.get_parameter(name).detach(), original + delta.tensors[name])


def test_the_edited_layers_end_at_the_top_ranked_mlp():
    components = [Component(5, MLP), Component(7, MLP)]
    assert edited_layers(components, KeyedConfig()) == [3, 4, 5]
    assert edited_layers(components, KeyedConfig(layer=1)) == [0, 1]
    assert edited_layers(components, KeyedConfig(layers=[6, 2, 4])) == [2, 4, 6]
    with pytest.raises(ValueError, match="memit edits MLPs"):
        edited_layers([], KeyedConfig())
    for bad in ({"layers": []}, {"layers": [-1]}, {"layers": 3}, {"span": 0}, {"nullspace_threshold": 0},
                {"nullspace_threshold": 2}, {"covariance_weight": 0}, {"nullspace_ridge": -1}):
        with pytest.raises(ValueError, match=f"editor.keyed.{next(iter(bad))}"):
            KeyedConfig(**bad)


@pytest.mark.parametrize("method, family", [("memit", "gemma3_text"), ("alphaedit", "gemma3_text"),
                                            ("memit", "qwen2"), ("alphaedit", "llama")])
def test_an_edit_through_the_pipeline_saves_a_delta_that_reads_back(tmp_path, method, family):
    from circuitedit.workflows.outputs import load_edited

    model, result, out = keyed_edit(tmp_path, family, method, REQUEST)
    assert [s.name for s in result.outcome.stages] == ["value"] and result.metrics["efficacy"] is not None
    saved = out / "adapters" / method
    assert (saved / "delta.safetensors").exists() and not (out / "model").exists()
    details = json.loads((saved / "delta.json").read_text())
    assert details["name"] == method and details["layers"] == [0] and len(details["unreached"]) == 1
    if method == "alphaedit":
        assert details["nullspace_dims"][0] > 0 and 0 <= details["nullspace_energy"][0] <= 1
    name = f"{get_adapter(model).mlp_out_name(0)}.weight"
    edited, _, _ = load_edited(out, dtype="fp32", device="cpu")
    assert torch.equal(edited.get_parameter(name), result.model.get_parameter(name))
    assert not torch.equal(edited.get_parameter(name), model.get_parameter(name))  # the base is untouched
