"""IA3 adapters on localized components: gradient isolation, identity at init, exact merge."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from circuitedit.edit.base import freeze
from circuitedit.edit.ia3 import attach_ia3, ia3_state, ia3_vectors, merge_fp32
from circuitedit.models import HEAD, MLP, Component, get_adapter
from tiny import FAMILIES, tiny_model

PEFT_PREFIX = "base_model.model."
# Two heads of layer 0 (heads 0 and 2 stay untouched) and the MLP of layer 1.
SELECTED = [Component(0, HEAD, 1), Component(0, HEAD, 3), Component(1, MLP)]
INPUT = torch.tensor([[2, 216, 74, 225, 367, 388, 366, 504, 291, 416], [2, 100, 101, 102, 103, 104, 105, 106, 107, 108]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT).logits.float()


def _randomize(peft_model, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in ia3_vectors(peft_model).values():
            param.copy_(1 + 0.5 * torch.randn(param.shape, generator=gen))


@pytest.mark.parametrize("family", FAMILIES)
def test_only_targeted_modules_get_ia3_and_nothing_else_trains(family):
    model, _ = tiny_model(family)
    adapter = get_adapter(model)
    freeze(model)
    assert not any(p.requires_grad for p in model.parameters())
    peft_model = attach_ia3(model, adapter, SELECTED)

    expected = {PEFT_PREFIX + adapter.attn_out_name(0), PEFT_PREFIX + adapter.mlp_out_name(1)}
    assert set(ia3_vectors(peft_model)) == expected
    with_ia3 = {name for name, module in peft_model.named_modules() if hasattr(module, "ia3_l")}
    assert with_ia3 == expected
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".ia3_l." in name for name in trainable), trainable
    # IA3 on the input of o_proj / down_proj: one scale per input feature.
    o_proj_vector = ia3_vectors(peft_model)[PEFT_PREFIX + adapter.attn_out_name(0)]
    assert o_proj_vector.numel() == adapter.num_heads(model) * adapter.head_dim(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_unselected_heads_get_exactly_zero_gradient(family):
    model, _ = tiny_model(family)
    adapter = get_adapter(model)
    freeze(model)
    peft_model = attach_ia3(model, adapter, SELECTED)
    _randomize(peft_model)  # away from the all-ones init, so gradients are generic
    vectors = ia3_vectors(peft_model)
    params = list(vectors.values())
    optimizer = torch.optim.Adam(params, lr=0.1)

    logits = peft_model(input_ids=INPUT).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), INPUT[:, 1:].reshape(-1))
    loss.backward()

    heads = vectors[PEFT_PREFIX + adapter.attn_out_name(0)]
    grad = heads.grad.reshape(-1)
    for head in range(adapter.num_heads(model)):
        part = grad[adapter.head_slice(model, head)]
        if head in (1, 3):
            assert part.abs().sum() > 0, f"selected head {head} got no gradient"
        else:
            assert torch.equal(part, torch.zeros_like(part)), f"unselected head {head} got gradient"
    assert vectors[PEFT_PREFIX + adapter.mlp_out_name(1)].grad.abs().sum() > 0
    for name, param in peft_model.named_parameters():
        if ".ia3_l." not in name:
            assert param.grad is None, name

    before = heads.detach().clone().reshape(-1)
    optimizer.step()
    after = heads.detach().reshape(-1)
    for head in (0, 2):
        sl = adapter.head_slice(model, head)
        assert torch.equal(after[sl], before[sl])
    for head in (1, 3):
        sl = adapter.head_slice(model, head)
        assert not torch.equal(after[sl], before[sl])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mlp_scaling", ["hidden", "output"])
def test_untrained_adapter_is_the_identity(family, mlp_scaling):
    model, _ = tiny_model(family)
    reference = _logits(model)
    peft_model = attach_ia3(model, get_adapter(model), SELECTED, mlp_scaling)
    assert all(torch.equal(v, torch.ones_like(v)) for v in ia3_vectors(peft_model).values())
    assert torch.allclose(_logits(peft_model), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mlp_scaling", ["hidden", "output"])
def test_merged_model_matches_adapter_in_fp32(family, mlp_scaling):
    model, _ = tiny_model(family)
    base = _logits(model)
    peft_model = attach_ia3(model, get_adapter(model), SELECTED, mlp_scaling)
    _randomize(peft_model, seed=1)
    adapted = _logits(peft_model)
    assert not torch.allclose(adapted, base, atol=1e-3)  # the random vectors do something
    merged = merge_fp32(peft_model)
    assert not any("ia3" in name for name, _ in merged.named_parameters())
    assert not isinstance(merged, PeftModel) and type(merged) is type(peft_model.get_base_model())
    merged_logits = _logits(merged)
    scale = adapted.abs().max().item()
    assert (merged_logits - adapted).abs().max().item() <= 1e-5 * max(1.0, scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_merge_touches_only_selected_head_slices(family):
    model, _ = tiny_model(family)
    adapter = get_adapter(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = attach_ia3(model, adapter, SELECTED)
    _randomize(peft_model, seed=2)
    with torch.no_grad():  # what training would leave: unselected heads' slices at exactly 1
        vector = ia3_vectors(peft_model)[PEFT_PREFIX + adapter.attn_out_name(0)]
        flat = vector.view(-1)
        for head in (0, 2):
            flat[adapter.head_slice(model, head)] = 1.0
    merged = merge_fp32(peft_model)
    state = merged.state_dict()
    changed = {k for k in original if not torch.equal(original[k], state[k])}
    assert changed == {adapter.attn_out_name(0) + ".weight", adapter.mlp_out_name(1) + ".weight"}

    weight, before = state[adapter.attn_out_name(0) + ".weight"], original[adapter.attn_out_name(0) + ".weight"]
    conv1d = family == "gpt2"  # Conv1D stores (in, out): heads are rows, not columns
    for head in range(4):
        sl = adapter.head_slice(model, head)
        new, old = (weight[sl], before[sl]) if conv1d else (weight[:, sl], before[:, sl])
        assert torch.equal(new, old) == (head in (0, 2)), head


def test_merge_fp32_keeps_low_precision_dtype():
    model, _ = tiny_model("llama")
    model.to(torch.bfloat16)
    peft_model = attach_ia3(model, get_adapter(model), SELECTED)
    _randomize(peft_model)
    state = ia3_state(peft_model)
    assert state and all(t.device.type == "cpu" for t in state.values())
    merged = merge_fp32(peft_model)
    assert all(p.dtype == torch.bfloat16 for p in merged.parameters())
