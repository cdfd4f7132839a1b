"""Every localizer on tiny random models: shapes, determinism, selection policies, the
known-answer models (one head / one MLP alone carries the answer), the plot and `localize` CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitedit.cli import main
from circuitedit.core.forward import hidden_states
from circuitedit.core.tokens import prompt_and_target_ids
from circuitedit.data.facts import demo_requests
from circuitedit.localize import LOCALIZERS, LocalizationResult, LocalizeConfig, localize
from circuitedit.localize.base import ComponentScore
from circuitedit.localize.fact_lookup import lookup_layers
from circuitedit.models.arch import get_adapter
from circuitedit.models.components import HEAD, MLP, Component
from circuitedit.render.plots import localization_heatmap
from tiny import FAMILIES, tiny_model

REQUEST = demo_requests()[0]  # The Eiffel Tower is located in the city of -> Paris
SCORING = ("activation", "attribution", "causal-tracing", "gradient")  # rank heads and MLPs
ALL = (*SCORING, "fact-lookup", "random", "all-layers")


def test_every_method_is_registered():
    assert set(ALL) <= set(LOCALIZERS)


@pytest.fixture(scope="module")
def models():
    return {family: tiny_model(family) for family in FAMILIES}


def expected_components(model, method: str) -> set[Component]:
    adapter = get_adapter(model)
    if method == "fact-lookup":
        return {Component(layer, MLP) for layer in lookup_layers(adapter.num_layers(model))}
    return set(adapter.all_layer_components(model))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ALL)
def test_shapes(models, family, method):
    model, tokenizer = models[family]
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method=method))
    assert result.method == method
    assert set(result.component_scores()) == expected_components(model, method)
    assert all(math.isfinite(s.score) for s in result.scores)
    groups = {s.position for s in result.scores}
    if method in ("random", "all-layers"):
        assert groups == {"all"} and result.passes == 0
    elif method == "fact-lookup":
        assert groups == {"subject"} and result.passes > 0
        assert len(result.details["logit_lens"]) == get_adapter(model).num_layers(model)
    else:
        assert groups == {"subject", "last"} and result.passes > 0
        # one score per (component, group)
        assert len(result.scores) == 2 * len(expected_components(model, method))
    json.dumps(result.to_dict())  # serialisable


@pytest.mark.parametrize("method", ALL)
def test_deterministic(models, method):
    model, tokenizer = models["llama"]
    first = localize(model, tokenizer, REQUEST, LocalizeConfig(method=method))
    second = localize(model, tokenizer, REQUEST, LocalizeConfig(method=method))
    assert [(s.component, s.position) for s in first.scores] == [(s.component, s.position) for s in second.scores]
    for a, b in zip(first.scores, second.scores, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-7)


def test_random_is_seeded_and_draws_top_k(models):
    model, tokenizer = models["llama"]
    draws = [localize(model, tokenizer, REQUEST, LocalizeConfig(method="random", seed=s, top_k=3, kinds="both")) for s in (0, 0, 1)]
    assert draws[0].select(3) == draws[1].select(3)
    assert draws[0].select(3) != draws[2].select(3)
    assert len(draws[0].select(3)) == 3 and draws[0].details["drawn"] == [c.name for c in draws[0].select(3)]
    assert all(c.kind == HEAD for c in draws[0].select(3, kinds="heads"))


def test_all_layers_selects_everything(models):
    model, tokenizer = models["gemma3_text"]
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method="all-layers", top_k=2))
    everything = get_adapter(model).all_layer_components(model)
    assert result.selects_all
    assert set(result.select(2)) == set(everything)
    assert set(result.select(top_k=1, fraction=0.1)) == set(everything)
    assert {c.kind for c in result.select(2, kinds="mlps")} == {MLP}
    assert len(result.select(2, kinds="heads")) == len(everything) - get_adapter(model).num_layers(model)
    assert result.to_dict()["selects_all"] is True


# ---- selection policies -----------------------------------------------------------------------

def toy_result() -> LocalizationResult:
    values = {Component(0, HEAD, 0): 5.0, Component(0, HEAD, 1): -3.0, Component(0, MLP): 1.0,
              Component(1, HEAD, 0): 0.5, Component(1, MLP): -0.5}
    scores = [ComponentScore(c, "last", v) for c, v in values.items()]
    scores.append(ComponentScore(Component(1, MLP), "subject", 2.0))  # max |score| over groups: 2.0
    return LocalizationResult("toy", scores)


def test_select_top_k_and_kinds():
    result = toy_result()
    assert result.select(2) == [Component(0, HEAD, 0), Component(0, HEAD, 1)]
    assert result.select(2, "mlps") == [Component(1, MLP), Component(0, MLP)]
    assert result.select(10, "heads") == [Component(0, HEAD, 0), Component(0, HEAD, 1), Component(1, HEAD, 0)]
    assert result.select(0) == []
    assert result.ranked()[2] == (Component(1, MLP), 2.0)


def test_select_fraction():
    result = toy_result()  # |scores| 5, 3, 2, 1, 0.5 -> total 11.5
    assert result.select(fraction=0.4) == [Component(0, HEAD, 0)]  # 5 >= 4.6
    assert result.select(fraction=0.5) == [Component(0, HEAD, 0), Component(0, HEAD, 1)]  # 8 >= 5.75
    assert len(result.select(fraction=1.0)) == 5
    assert result.select(fraction=0.9, kinds="mlps") == [Component(1, MLP), Component(0, MLP)]
    assert result.select(1, "both", None) == result.select(top_k=1)  # positional API unchanged


def test_select_by_applies_the_whole_policy():
    """edit() and bench select through this one method: kinds, positions and max layer."""
    result = toy_result()
    config = LocalizeConfig(top_k=1, kinds="mlps", positions="subject")
    assert result.select_by(config, num_layers=2) == [Component(1, MLP)]
    config = LocalizeConfig(top_k=2, kinds="mlps", positions="all", max_layer_fraction=0.5)
    assert result.select_by(config, num_layers=2) == [Component(0, MLP)]  # layer 1 is beyond 0.5 of 2


# ---- known-answer models ----------------------------------------------------------------------

CARRIER_HEAD = Component(1, HEAD, 2)
CARRIER_MLP = Component(0, MLP)


def _answer_direction(model, tokenizer) -> tuple[int, torch.Tensor]:
    answer = prompt_and_target_ids(tokenizer, REQUEST.text, REQUEST.old_object)[1][0]
    u = model.get_output_embeddings().weight[answer].detach().clone()
    return answer, u / u.norm()


def _capture_input(model, module_name: str, ids) -> torch.Tensor:
    seen = {}
    handle = model.get_submodule(module_name).register_forward_pre_hook(
        lambda _m, args: seen.setdefault("x", args[0].detach().clone()))
    with torch.no_grad():
        hidden_states(model, ids, torch.ones_like(ids))
    handle.remove()
    return seen["x"][0]


@pytest.fixture(scope="module")
def head_carrier():
    """Llama tiny model where head L1.H2 alone writes to the residual stream, pushing 'Paris'."""
    model, tokenizer = tiny_model("llama", seed=1)
    adapter = get_adapter(model)
    width = adapter.head_dim(model)
    cols = slice(CARRIER_HEAD.head * width, (CARRIER_HEAD.head + 1) * width)
    ids = torch.tensor([tokenizer(REQUEST.text)["input_ids"]])
    answer, u = _answer_direction(model, tokenizer)
    with torch.no_grad():
        for layer in range(adapter.num_layers(model)):
            model.get_submodule(adapter.mlp_out_name(layer)).weight.zero_()
            o_proj = model.get_submodule(adapter.attn_out_name(layer)).weight
            keep = o_proj[:, cols].clone()
            o_proj.zero_()
            if layer == CARRIER_HEAD.layer:
                o_proj[:, cols] = keep
        z = _capture_input(model, adapter.attn_out_name(CARRIER_HEAD.layer), ids)[-1, cols]
        emb = model.get_input_embeddings().weight[ids[0, -1]].norm()
        # the head's output at the last token: 4 x |embedding| along the answer's unembedding
        o_proj = model.get_submodule(adapter.attn_out_name(CARRIER_HEAD.layer)).weight
        o_proj[:, cols] = 4 * emb * torch.outer(u, z / z.norm()) / z.norm()
        logits = model(ids).logits[0, -1]
    assert logits.argmax().item() == answer
    return model, tokenizer


@pytest.mark.parametrize("method", SCORING)
def test_known_answer_head_ranked_first(head_carrier, method):
    model, tokenizer = head_carrier
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method=method))
    ranked = result.ranked()
    assert ranked[0][0] == CARRIER_HEAD, ranked[:3]
    assert ranked[0][1] > 0
    assert result.select(1) == [CARRIER_HEAD]
    assert result.select(1, kinds="heads") == [CARRIER_HEAD]


@pytest.fixture(scope="module")
def mlp_carrier():
    """Llama tiny model where MLP L0 alone (of the MLPs) writes, pushing 'Paris' at every token;
    heads keep their random weights, so they move its output from the subject to the last token."""
    model, tokenizer = tiny_model("llama", seed=2)
    adapter = get_adapter(model)
    ids = torch.tensor([tokenizer(REQUEST.text)["input_ids"]])
    _, u = _answer_direction(model, tokenizer)
    with torch.no_grad():
        for layer in range(adapter.num_layers(model)):
            model.get_submodule(adapter.mlp_out_name(layer)).weight.zero_()
        h = _capture_input(model, adapter.mlp_out_name(CARRIER_MLP.layer), ids)
        w = h[1:-1].mean(0)  # the subject/middle tokens' MLP hidden activations
        emb = model.get_input_embeddings().weight[ids[0, -1]].norm()
        down = model.get_submodule(adapter.mlp_out_name(CARRIER_MLP.layer)).weight
        down.copy_(4 * emb * torch.outer(u, w / w.norm()) / w.norm())
    return model, tokenizer


def test_known_answer_fact_lookup_ranks_the_mlp_first(mlp_carrier):
    model, tokenizer = mlp_carrier
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method="fact-lookup"))
    ranked = result.ranked()
    assert ranked[0][0] == CARRIER_MLP and ranked[0][1] > 0, ranked
    assert all(score < 1e-5 for _comp, score in ranked[1:])
    assert result.select(1, kinds="mlps") == [CARRIER_MLP]


@pytest.mark.parametrize("method", SCORING)
def test_known_answer_mlp_ranked_first_among_mlps(mlp_carrier, method):
    # the other MLP writes nothing; the (random) heads do move the MLP's output, so only the
    # MLP ranking is determined by construction
    model, tokenizer = mlp_carrier
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method=method))
    assert result.select(1, kinds="mlps") == [CARRIER_MLP], result.ranked("mlps")


def test_causal_trace_details(models):
    model, tokenizer = models["gpt2"]
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method="causal-tracing"))
    trace = result.details["trace"]
    positions = len(trace["positions"])
    assert len(trace["hidden"]) == 2 and all(len(row) == positions for row in trace["mlp"])
    assert trace["tokens"][-1].strip() == "of"
    # restoring the whole residual stream at the last token of the last layer restores everything
    assert trace["hidden"][-1][-1] == pytest.approx(trace["p_clean"] - trace["p_corrupt"], abs=1e-6)


def test_paraphrases_are_aggregated(models):
    model, tokenizer = models["qwen2"]
    request = demo_requests()[0]
    request.paraphrases = ["The {} can be found in the city of"]
    for method in ("gradient", "causal-tracing", "fact-lookup"):
        with_para = localize(model, tokenizer, request, LocalizeConfig(method=method))
        alone = localize(model, tokenizer, request, LocalizeConfig(method=method, use_paraphrases=False))
        assert with_para.details["prompts"] == 2 and alone.details["prompts"] == 1
        assert with_para.passes > alone.passes


# ---- plot and CLI -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ("fact-lookup", "random", "attribution"))
def test_heatmap_writes_png(models, tmp_path, method):
    model, tokenizer = models["gemma3_text"]
    result = localize(model, tokenizer, REQUEST, LocalizeConfig(method=method))
    path = localization_heatmap(result, tmp_path / "h.png", num_layers=2, num_heads=4, selected=result.select(3))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model, tokenizer = tiny_model("llama")
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


ARGS = ["--subject", "Eiffel Tower", "--prompt", "The {} is located in the city of", "--old", "Paris"]


def test_cli_localize_writes_json_and_heatmap(tiny_dir, tmp_path, capsys):
    out = tmp_path / "loc"
    code = main(["localize", *ARGS, "--model", str(tiny_dir), "--device", "cpu", "--localizer", "causal-tracing",
                 "--top-k", "3", "--kinds", "both", "--positions", "all", "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "localization.json").read_text())
    assert saved["selected"] == printed["selected"] and len(saved["selected"]) == 3
    assert saved["ranked"][0]["rank"] == 1 and {"layer", "kind", "head", "position", "score"} <= set(saved["ranked"][0])
    assert saved["localization"]["method"] == "causal-tracing"
    # a random model does not state the fact: localize says what it continues with instead
    assert saved["old_object_given"] is False and isinstance(saved["continuation"], str)
    for png in ("heatmap.png", "causal_trace.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loc"]  # no temporary directory left


@pytest.mark.parametrize("extra", (["--top-k", "1"], ["--top-k", "3", "--kinds", "both"]))
def test_cli_localize_selects_what_an_edit_trains(tiny_dir, tmp_path, capsys, extra):
    """Same policy, same corrupting subject, same components: `localize` then `edit` agree."""
    from circuitedit import edit, load_model
    from circuitedit.data.requests import EditRequest
    from circuitedit.workflows.pipeline import EditConfig

    argv = ["localize", *ARGS, "--model", str(tiny_dir), "--device", "cpu", "--dtype", "fp32", "--no-reference-cache",
            "--json", *extra]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    config = EditConfig.from_dict({"localize": printed["config"], "editor": {"unlearn": {"max_steps": 1},
                                   "learn": {"max_steps": 1}}, "evaluate": {"max_new_tokens": 2}})
    model, tokenizer = load_model(str(tiny_dir), dtype="fp32", device="cpu")
    request = EditRequest(subject="Eiffel Tower", prompt="The {} is located in the city of",
                          old_object="Paris", new_object="Rome")
    result = edit(model, tokenizer, request, config)
    assert printed["localization"]["corruption"] == result.localization.corruption
    assert printed["selected"] == [c.name for c in result.components]
    assert len(printed["selected"]) == config.localize.top_k
    if "--kinds" not in extra:  # the edit's defaults: MLPs ranked at the subject's tokens
        assert printed["config"]["kinds"] == "mlps" and printed["config"]["positions"] == "subject"
        assert all(row["kind"] == "mlp" and row["position"] == "subject" for row in printed["ranked"])


def test_cli_localize_takes_a_saved_config_and_flags_override_it(tiny_dir, tmp_path, capsys):
    config = tmp_path / "edit.yaml"
    config.write_text("localize:\n  top_k: 1\n  kinds: both\n  positions: last\n  seed: 3\n")
    base = ["localize", *ARGS, "--model", str(tiny_dir), "--device", "cpu", "--no-reference-cache", "--json",
            "--config", str(config)]
    assert main(base) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["selected"]) == 1
    assert {k: printed["config"][k] for k in ("top_k", "kinds", "positions", "seed")} == {
        "top_k": 1, "kinds": "both", "positions": "last", "seed": 3}
    assert all(row["position"] == "last" for row in printed["ranked"])
    assert main([*base, "--top-k", "2", "--kinds", "mlps"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed["selected"]) == ["L0.MLP", "L1.MLP"]
    assert printed["config"]["positions"] == "last"


def test_cli_localize_table(tiny_dir, capsys):
    assert main(["localize", *ARGS, "--model", str(tiny_dir), "--device", "cpu", "--kinds", "mlps"]) == 0
    out = capsys.readouterr().out
    assert "L0.MLP" in out and "L1.MLP" in out and ".H" not in out
    assert "note:" in out and "the model continues" in out  # a random model does not say Paris


@pytest.mark.parametrize("extra", (["--localizer", "nope"], ["--top-k", "0"], ["--fraction", "2"]))
def test_cli_localize_bad_input(tiny_dir, tmp_path, capsys, extra):
    out = tmp_path / "loc"
    code = main(["localize", *ARGS, "--model", str(tiny_dir), "--device", "cpu", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("circuitedit: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_localize_missing_and_bad_subject(tiny_dir, tmp_path, capsys):
    assert main(["localize", "--subject", "X", "--prompt", "p", "--model", str(tiny_dir)]) == 2
    assert "--old" in capsys.readouterr().err
    assert main(["localize", "--subject", "Nowhere", "--prompt", "The tower is in", "--old", "Paris",
                 "--model", str(tiny_dir), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_position_free_scores_survive_a_position_filter(models):
    model, tokenizer = models["llama"]
    for method in ("random", "all-layers"):
        result = localize(model, tokenizer, REQUEST, LocalizeConfig(method=method))
        assert result.select(3, positions="subject") == result.select(3)
