"""The baseline editors on tiny models: what each one may and may not change."""

from __future__ import annotations

import pytest
import torch

from circuitedit.data.requests import EditRequest
from circuitedit.edit import EDITORS, StageConfig
from circuitedit.models.arch import get_adapter
from circuitedit.models.components import HEAD, MLP, Component
from circuitedit.workflows.pipeline import EditConfig, edit
from tiny import tiny_model

REQUEST = EditRequest(subject="Foo Bar", prompt="Foo Bar is located in the city of", old_object="Paris",
                      new_object="Rome", test_paraphrases=["Foo Bar can be found in the city of"])
COMPONENTS = [Component(1, HEAD, 2), Component(0, MLP)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(method: str) -> EditConfig:
    config = EditConfig(method=method)
    config.editor.unlearn = StageConfig(max_steps=3, min_steps=3, margin=1e9)
    config.editor.learn = StageConfig(max_steps=3, min_steps=3, margin=1e9)
    config.editor.n_prefixes = 0
    config.editor.n_template_neighbours = 0
    return config


def _run(family: str, method: str):
    model, tokenizer = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = edit(model, tokenizer, REQUEST, _config(method), controls=[], components=COMPONENTS)
    for key, value in model.state_dict().items():  # the base model is never touched
        assert torch.equal(value, before[key]), key
    changed = {k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])}
    assert not any(p.requires_grad for p in result.model.parameters())
    return model, result, before, changed


def test_every_method_is_registered():
    assert {"none", "unlearn-then-learn", "learn-only", "ia3-all-layers", "ft-full", "ft-localized",
            "lora-localized"} <= set(EDITORS)
    for name in ("none", "ia3-all-layers", "ft-full"):
        assert EDITORS[name].uses_localization is False


def test_none_changes_nothing():
    _, result, _, changed = _run("gemma3_text", "none")
    assert changed == set() and result.outcome.steps == 0 and result.outcome.stages == []
    assert result.metrics["new_fact_accuracy"] == 0.0


def test_learn_only_is_one_ia3_stage_on_the_components():
    model, result, _, changed = _run("gemma3_text", "learn-only")
    [stage] = result.outcome.stages
    assert stage.name == "learn" and stage.steps == 3 and result.outcome.adapters[0].name == "learn"
    adapter = get_adapter(model)
    assert changed == {f"{adapter.attn_out_name(1)}.weight", f"{adapter.mlp_out_name(0)}.weight"}


def test_ia3_all_layers_ignores_localization():
    model, result, _, changed = _run("gemma3_text", "ia3-all-layers")
    assert [s.name for s in result.outcome.stages] == ["unlearn", "learn"]
    adapter = get_adapter(model)
    layers = range(adapter.num_layers(model))
    assert changed == {f"{adapter.attn_out_name(i)}.weight" for i in layers} | {
        f"{adapter.mlp_out_name(i)}.weight" for i in layers}


def test_ft_full_trains_every_weight():
    model, result, _, changed = _run("gemma3_text", "ft-full")
    [stage] = result.outcome.stages
    assert stage.trainable_parameters == sum(p.numel() for p in model.parameters())
    assert len(changed) > 0.8 * len(dict(model.named_parameters()))


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
@pytest.mark.parametrize("method", ["ft-localized", "lora-localized"])
def test_localized_weights_only_and_only_the_selected_head(family, method):
    model, result, before, changed = _run(family, method)
    adapter = get_adapter(model)
    allowed = {f"{name}.{p}" for name in adapter.weight_targets(COMPONENTS) for p in ("weight", "bias")}
    assert changed and changed <= allowed, changed - allowed
    attn = f"{adapter.attn_out_name(1)}.weight"
    assert attn in changed
    after = result.model.state_dict()[attn]
    delta = (after - before[attn]).abs()
    conv1d = family == "gpt2"  # Conv1D keeps (in, out): heads are rows
    per_input = delta.sum(1) if conv1d else delta.sum(0)
    head = adapter.head_slice(model, 2)
    assert per_input[head].sum() > 0
    others = torch.ones_like(per_input, dtype=torch.bool)
    others[head] = False
    assert per_input[others].abs().max() <= 1e-6
    [stage] = result.outcome.stages
    width = head.stop - head.start
    assert 0 < stage.trainable_parameters
    if method == "ft-localized":
        out_features = after.shape[1] if conv1d else after.shape[0]
        mlp = sum(p.numel() for n in adapter.weight_targets(COMPONENTS) if n != adapter.attn_out_name(1)
                  for p in model.get_submodule(n).parameters())
        assert stage.trainable_parameters == out_features * width + mlp


def test_baseline_learning_rates_are_config_fields():
    """Guards that editor.ft_lr / editor.lora_lr can be set from a config file and are validated."""
    config = EditConfig.from_dict({"method": "ft-full", "editor": {"ft_lr": 1e-4, "lora_lr": 5e-3}})
    config.validate()
    assert (config.editor.ft_lr, config.editor.lora_lr) == (1e-4, 5e-3)
    assert EditConfig.from_dict(config.to_dict()).editor.ft_lr == 1e-4
    defaults = EditConfig().editor
    assert (defaults.ft_lr, defaults.lora_lr) == (2e-5, 1e-3)
    for name in ("ft_lr", "lora_lr"):
        with pytest.raises(ValueError, match=f"editor.{name}: must be positive"):
            EditConfig.from_dict({"editor": {name: 0.0}}).validate()


def test_ft_full_takes_its_adam_step_at_editor_ft_lr():
    """Guards that ft-full trains at a config file's editor.ft_lr: one Adam step (beta1 0, no weight decay)
    moves the weight with the largest gradient by lr, so the largest change is the lr."""
    model, tokenizer = tiny_model("gemma3_text")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for lr in (1e-4, 3e-3):
        config = EditConfig.from_dict({"method": "ft-full", "editor": {
            "ft_lr": lr, "learn": {"max_steps": 1, "min_steps": 1, "margin": 1e9},
            "n_prefixes": 0, "n_template_neighbours": 0}})
        result = edit(model, tokenizer, REQUEST, config, controls=[], components=COMPONENTS)
        assert result.outcome.steps == 1
        moved = max((v - before[k]).abs().max().item() for k, v in result.model.state_dict().items())
        assert moved == pytest.approx(lr, rel=1e-3)


@pytest.mark.parametrize("method, module, field", [("ft-full", "ft_full", "ft_lr"),
                                                   ("ft-localized", "ft_localized", "ft_lr"),
                                                   ("lora-localized", "lora_localized", "lora_lr")])
def test_each_baseline_trains_at_its_configured_lr(monkeypatch, method, module, field):
    """Guards that every weight-training baseline hands its EditorConfig lr to the training loop."""
    import importlib

    editor_module = importlib.import_module(f"circuitedit.edit.{module}")
    seen = []

    def spy(name, model, tokenizer, inputs, stage_config, *args, **kwargs):
        seen.append(stage_config.lr)
        return real(name, model, tokenizer, inputs, stage_config, *args, **kwargs)

    real = editor_module.train_stage
    monkeypatch.setattr(editor_module, "train_stage", spy)
    model, tokenizer = tiny_model("gemma3_text")
    config = EditConfig.from_dict({"method": method, "editor": {
        field: 7e-4, "learn": {"max_steps": 1, "min_steps": 1, "margin": 1e9},
        "n_prefixes": 0, "n_template_neighbours": 0}})
    edit(model, tokenizer, REQUEST, config, controls=[], components=COMPONENTS)
    assert seen == [7e-4]
