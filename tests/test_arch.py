"""Architecture adapters: module names, head widths and PEFT targets of every family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, GPTNeoXConfig
from transformers.pytorch_utils import Conv1D

from circuitedit.models import HEAD, MLP, Component, UnsupportedArchitectureError, get_adapter
from circuitedit.models.arch import adapter_for_model_type, supported_model_types
from circuitedit.models.arch.base import in_features
from circuitedit.models.components import all_components
from tiny import FAMILIES, tiny_model


def _head_dim(config) -> int:
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    explicit = getattr(config, "head_dim", None)
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    return explicit or hidden // heads


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family)[0] for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_module_names_exist(models, family):
    model = models[family]
    adapter = get_adapter(model)
    assert adapter.family == family
    assert adapter.num_layers(model) == model.config.num_hidden_layers == 2
    names = dict(model.named_modules())
    for layer in range(adapter.num_layers(model)):
        assert adapter.attn_out_name(layer) in names
        assert adapter.mlp_out_name(layer) in names
        for rel in (*adapter.attn_in, *adapter.mlp_in):
            assert f"{adapter.layer_name(layer)}.{rel}" in names, rel
        assert adapter.module_name(Component(layer, HEAD, 0)) == adapter.attn_out_name(layer)
        assert adapter.module_name(Component(layer, MLP)) == adapter.mlp_out_name(layer)
    # PEFT's fan_in_fan_out: every weight the editors touch is stored (in, out) exactly when it says.
    for name in adapter.weight_targets(adapter.all_layer_components(model)):
        assert isinstance(model.get_submodule(name), Conv1D) == adapter.weights_transposed, name


@pytest.mark.parametrize("family", FAMILIES)
def test_attn_out_input_is_the_concatenation_of_heads(models, family):
    model = models[family]
    adapter = get_adapter(model)
    heads, head_dim = adapter.num_heads(model), _head_dim(model.config)
    assert heads == 4
    assert adapter.head_dim(model) == head_dim
    for layer in range(adapter.num_layers(model)):
        assert in_features(model.get_submodule(adapter.attn_out_name(layer))) == heads * head_dim
    assert adapter.head_slice(model, 2) == slice(2 * head_dim, 3 * head_dim)

    seen = {}

    def record(_module, args):
        seen["shape"] = tuple(args[0].shape)

    hook = model.get_submodule(adapter.attn_out_name(0)).register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[2, 5, 6, 7]]))
    finally:
        hook.remove()
    assert seen["shape"] == (1, 4, heads * head_dim)


@pytest.mark.parametrize("family", FAMILIES)
def test_ia3_targets(models, family):
    adapter = get_adapter(models[family])
    comps = [Component(1, MLP), Component(0, HEAD, 1), Component(0, HEAD, 3)]
    targets, feedforward = adapter.ia3_targets(comps)
    assert targets == [adapter.attn_out_name(0), adapter.mlp_out_name(1)]  # one per module, sorted
    assert feedforward == targets  # hidden scaling: both scale their input
    targets, feedforward = adapter.ia3_targets(comps, mlp_scaling="output")
    assert feedforward == [adapter.attn_out_name(0)]


def test_phi3_fused_projections(models):
    model = models["phi3"]
    adapter = get_adapter(model)
    assert adapter.attn_in == ("self_attn.qkv_proj",)
    assert adapter.mlp_in == ("mlp.gate_up_proj",)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    qkv = model.get_submodule("model.layers.0.self_attn.qkv_proj")
    assert qkv.out_features == (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim
    assert model.get_submodule("model.layers.0.mlp.gate_up_proj").out_features == 2 * cfg.intermediate_size
    assert adapter.weight_targets([Component(0, MLP), Component(1, HEAD, 2)]) == [
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.o_proj",
    ]
    targets, _ = adapter.ia3_targets([Component(0, MLP), Component(1, HEAD, 2)])
    assert targets == ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"]


def test_gpt2_conv1d(models):
    model = models["gpt2"]
    adapter = get_adapter(model)
    out_proj = model.get_submodule(adapter.attn_out_name(0))
    assert isinstance(out_proj, Conv1D)
    assert not hasattr(out_proj, "in_features")
    assert in_features(out_proj) == out_proj.weight.shape[0] == model.config.n_embd
    assert adapter.weight_targets([Component(1, MLP), Component(0, HEAD, 0), Component(0, HEAD, 1)]) == [
        "transformer.h.0.attn.c_proj",
        "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj",
    ]
    targets, _ = adapter.ia3_targets([Component(1, MLP), Component(0, HEAD, 0)])
    assert targets == ["transformer.h.0.attn.c_proj", "transformer.h.1.mlp.c_proj"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_llama_like_weight_targets(models, family):
    adapter = get_adapter(models[family])
    assert adapter.weight_targets([Component(0, MLP)]) == [
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_all_layer_components(models, family):
    model = models[family]
    comps = get_adapter(model).all_layer_components(model)
    assert comps == all_components(2, 4)
    assert len(comps) == 2 * (4 + 1)


def _unsupported(kind: str):
    if kind == "bert":
        config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, is_decoder=True)
    else:
        config = GPTNeoXConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("kind", ["bert", "gpt_neox"])
def test_unsupported_architecture_lists_supported_ones(kind):
    model = _unsupported(kind)
    with pytest.raises(UnsupportedArchitectureError) as info:
        get_adapter(model)
    message = str(info.value)
    assert "\n" not in message
    assert repr(model.config.model_type) in message
    for model_type in ("gemma3_text", "llama", "qwen2", "phi3", "gpt2"):
        assert model_type in message
    assert message.endswith(", ".join(supported_model_types()))


def test_unsupported_architecture_in_edit_api(eiffel):
    from circuitedit import edit
    from tiny import tiny_tokenizer

    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'gpt_neox'"):
        edit(_unsupported("gpt_neox"), tiny_tokenizer(), eiffel)


def test_model_type_aliases():
    assert adapter_for_model_type("mistral").family == "llama"
    assert adapter_for_model_type("qwen3").family == "qwen2"
    with pytest.raises(UnsupportedArchitectureError):
        adapter_for_model_type("mamba")


def test_component_names_round_trip():
    for comp in all_components(3, 2):
        assert Component.parse(comp.name) == comp
    assert Component.parse("L12.H3") == Component(12, HEAD, 3)
    assert str(Component(4, MLP)) == "L4.MLP"
    for bad in ("L1", "H3", "L1.H", "l1.mlp", "L1.MLP.H2"):
        with pytest.raises(ValueError, match="cannot parse"):
            Component.parse(bad)
    with pytest.raises(ValueError):
        Component(0, HEAD)
    with pytest.raises(ValueError):
        Component(0, MLP, 1)
    with pytest.raises(ValueError):
        Component(0, "attn", 1)
