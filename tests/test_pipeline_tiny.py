"""`circuitedit.edit` end to end on a tiny model, the saved outputs, and the editor on every family."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from circuitedit import EditConfig, EditRequest, edit
from circuitedit.core.tokens import prompt_and_target_ids
from circuitedit.edit import EditorConfig, StageConfig, TrainingContext, get_editor
from circuitedit.edit.base import freeze
from circuitedit.edit.ia3 import merge_fp32
from circuitedit.models import HEAD, MLP, Component, get_adapter
from circuitedit.workflows.outputs import write_edit_outputs
from tiny import FAMILIES, tiny_model

FAMILY, SEED = "gemma3_text", 0
METRIC_KEYS = {"new_fact_accuracy", "paraphrase_accuracy", "train_paraphrase_accuracy", "question_accuracy",
               "forget_rate", "f_control", "f_control_clear", "control_stated_before", "neighbourhood_accuracy",
               "efficacy",
               "paraphrase_efficacy"}
REQUEST = dict(subject="Eiffel Tower", prompt="The Eiffel Tower is located in the city of", old_object="Paris",
               new_object="Rome", paraphrases=["Tourists visit the Eiffel Tower in the city of"],
               test_paraphrases=["The Eiffel Tower can be found in"],
               neighbourhood=[{"prompt": "The Louvre is located in the city of", "answer": "Paris"}])


def small_config() -> EditConfig:
    config = EditConfig()
    config.localize.top_k, config.localize.kinds, config.localize.positions = 4, "both", "all"
    config.editor.unlearn.max_steps = 3
    config.editor.learn.max_steps = 3
    config.editor.n_prefixes = 1
    config.editor.n_template_neighbours = 2
    config.evaluate.max_new_tokens = 3
    return config


@pytest.fixture(scope="module")
def edited():
    threads = torch.get_num_threads()  # module scope runs before conftest's one-thread fixture
    torch.set_num_threads(1)
    try:
        model, tokenizer = tiny_model(FAMILY, SEED)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = edit(model, tokenizer, EditRequest(**REQUEST), small_config())
    finally:
        torch.set_num_threads(threads)
    return model, tokenizer, before, result


@pytest.fixture(scope="module")
def outputs(edited, tmp_path_factory):
    _, tokenizer, _, result = edited
    out = tmp_path_factory.mktemp("edit") / "out"
    assert write_edit_outputs(result, out, tokenizer, save_model=True) == out
    return out


def test_edit_runs_end_to_end(edited):
    _, _, _, result = edited
    assert METRIC_KEYS <= set(result.metrics)
    for key in ("new_fact_accuracy", "paraphrase_accuracy", "train_paraphrase_accuracy", "forget_rate",
                "efficacy", "paraphrase_efficacy"):
        assert 0.0 <= result.metrics[key] <= 1.0, key
    assert result.metrics["question_accuracy"] is None  # no chat template on the tiny tokenizer
    assert {"evaluate_before_s", "localize_s", "train_s", "unlearn_s", "learn_s", "evaluate_after_s",
            "total_s"} <= set(result.timings)
    assert len(result.components) == 4 and result.localization.method == "attribution"
    assert [s.name for s in result.outcome.stages] == ["unlearn", "learn"]
    assert all(1 <= s.steps <= 3 for s in result.outcome.stages)
    assert {r.kind for r in result.rows} >= {"edit", "train_paraphrase", "test_paraphrase", "neighbourhood"}
    data = json.loads(json.dumps(result.to_dict(), default=str))
    assert data["steps"] == result.outcome.steps and data["method"] == "unlearn-then-learn"
    assert [c["name"] for c in data["components"]] == [c.name for c in result.components]


def test_input_model_is_bit_identical(edited):
    model, _, before, result = edited
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not any(p.requires_grad is False for p in model.parameters())  # not frozen in place either
    assert result.model is not model
    assert not isinstance(result.model, PeftModel)  # merged (merge_learned=True)
    changed = {k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])}
    adapter = get_adapter(model)
    allowed = {adapter.module_name(c) + ".weight" for c in result.components}
    assert changed and changed <= allowed


def test_outputs_are_peft_adapters_that_reproduce_the_edit(edited, outputs):
    _, _, _, result = edited
    saved = json.loads((outputs / "edit.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(result.metrics))
    assert (outputs / "model" / "config.json").exists()

    model = tiny_model(FAMILY, SEED)[0]  # a fresh copy: unlearn, merge, learn, merge
    for artifact in result.outcome.adapters:
        directory = outputs / "adapters" / artifact.name
        assert (directory / "adapter_config.json").exists()
        assert (directory / "adapter_model.safetensors").exists()
        config = json.loads((directory / "adapter_config.json").read_text())
        assert config["peft_type"] == "IA3"
        stored = load_file(str(directory / "adapter_model.safetensors"))
        assert stored.keys() == artifact.state.keys()
        peft_model = PeftModel.from_pretrained(model, str(directory))
        loaded = get_peft_model_state_dict(peft_model)
        assert loaded.keys() == artifact.state.keys()
        for key, value in artifact.state.items():
            assert torch.equal(loaded[key].cpu(), value), key
        model = merge_fp32(peft_model)
    ids = torch.tensor([[2, 216, 74, 225, 367, 388, 366, 504, 291, 416]])
    with torch.no_grad():
        replayed, direct = model(input_ids=ids).logits, result.model(input_ids=ids).logits
    assert torch.allclose(replayed, direct, atol=1e-5)


@pytest.mark.parametrize("source", ["adapters", "saved model"])
def test_load_edited_rebuilds_the_edited_model(edited, outputs, tmp_path, source):
    import shutil

    from circuitedit.workflows.outputs import load_edited

    *_, result = edited
    directory = tmp_path / "edit"
    shutil.copytree(outputs, directory)
    base_dir = tmp_path / "base"
    pristine = tiny_model(FAMILY, SEED)
    pristine[0].save_pretrained(base_dir)
    pristine[1].save_pretrained(base_dir)
    if source == "adapters":
        shutil.rmtree(directory / "model")
    model, _, meta = load_edited(directory, str(base_dir) if source == "adapters" else None, dtype="fp32",
                                 device="cpu")
    assert meta["request"]["subject"] == "Eiffel Tower"
    ids = torch.tensor([[2, 216, 74, 225, 367, 388, 366, 504, 291, 416]])
    with torch.no_grad():
        rebuilt, direct, unedited = (m(input_ids=ids).logits for m in (model, result.model, pristine[0]))
    assert torch.allclose(rebuilt, direct, atol=1e-5)
    assert not torch.allclose(rebuilt, unedited, atol=1e-3)  # it is the edit, not the base model


def test_edit_config_round_trip():
    config = small_config()
    assert EditConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown key"):
        EditConfig.from_dict({"localise": {"top_k": 2}})
    with pytest.raises(ValueError, match=r"^config: localize\.topk: unknown field \(known: method, top_k, "):
        EditConfig.from_dict({"localize": {"topk": 2}})
    with pytest.raises(ValueError, match=r"^config: editor\.learn\.learning_rate: unknown field \(known: lr, "):
        EditConfig.from_dict({"editor": {"learn": {"learning_rate": 0.1}}})
    with pytest.raises(ValueError, match=r"^config: evaluate: expected a mapping, got list"):
        EditConfig.from_dict({"evaluate": [1]})


def test_the_default_config_is_valid():
    EditConfig().validate()
    small_config().validate()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: setattr(c.localize, "top_k", 0), "localize.top_k"),
        (lambda c: setattr(c.localize, "fraction", 1.5), "localize.fraction"),
        (lambda c: setattr(c.editor.unlearn, "max_steps", 0), "editor.unlearn.max_steps"),
        (lambda c: setattr(c.editor.learn, "min_steps", 99), "editor.learn.min_steps"),
        (lambda c: setattr(c.editor.learn, "kl_weight", -1.0), "editor.learn.kl_weight"),
        (lambda c: setattr(c.editor.unlearn, "beta2", 1.0), "editor.unlearn.beta2"),
        (lambda c: setattr(c.evaluate, "max_new_tokens", 0), "evaluate.max_new_tokens"),
    ],
)
def test_edit_rejects_an_invalid_config_before_touching_the_model(change, expected):
    config = small_config()
    change(config)
    with pytest.raises(ValueError, match=expected):
        edit(None, None, EditRequest(**REQUEST), config)  # fails before the model or tokenizer is read


@pytest.mark.parametrize("family", FAMILIES)
def test_editor_changes_only_selected_components(family):
    """One unlearn and one learn step on every family: fused (phi3) and Conv1D (gpt2) included."""
    model, tokenizer = tiny_model(family)
    request = EditRequest(**REQUEST)
    components = [Component(0, HEAD, 1), Component(1, MLP)]
    context = TrainingContext(prompts=request.training_prompts, retain=None,
                              old_token=prompt_and_target_ids(tokenizer, request.text, request.old_object)[1][0])
    config = EditorConfig(unlearn=StageConfig(max_steps=1, margin=1.0), learn=StageConfig(max_steps=1))
    working = copy.deepcopy(model)
    freeze(working)
    outcome = get_editor("unlearn-then-learn")(working, tokenizer, request, components, context, config, None)
    assert [s.steps for s in outcome.stages] == [1, 1]
    assert [a.name for a in outcome.adapters] == ["unlearn", "learn"]

    adapter = get_adapter(model)
    old, new = model.state_dict(), outcome.model.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    attn, mlp = adapter.attn_out_name(0) + ".weight", adapter.mlp_out_name(1) + ".weight"
    assert changed == {attn, mlp}
    conv1d = family == "gpt2"  # Conv1D weight is (in, out): a head is a block of rows
    for head in range(adapter.num_heads(model)):
        sl = adapter.head_slice(model, head)
        same = torch.equal(old[attn][sl], new[attn][sl]) if conv1d else torch.equal(old[attn][:, sl], new[attn][:, sl])
        assert same == (head != 1), head


def test_neighbourhood_subjects_are_never_kl_neighbours():
    """A neighbourhood probe measures collateral damage; pinning its subject in training would hide it."""
    from circuitedit.edit.training.prompts import same_template_prompts

    model, tokenizer = tiny_model(FAMILY, seed=SEED)
    request = EditRequest(**REQUEST)
    pool = ["the Louvre", "Big Ben", "the Colosseum", "Eiffel Tower"]
    prompts = same_template_prompts(model, tokenizer, request, pool, count=4)
    assert prompts and not any(p.startswith("The the Louvre") for p in prompts)
    assert request.text not in prompts
    assert "The Colosseum is located in the city of" in prompts  # "The {}" + "the Colosseum": one article
    assert not any(p.startswith("The the ") for p in prompts)
    with_siblings = same_template_prompts(model, tokenizer, request, pool, count=2, siblings=2)
    made_up = [p for p in with_siblings if p not in same_template_prompts(model, tokenizer, request, pool, count=2)]
    assert len(made_up) == 2 and all("Eiffel " in p or " Tower" in p for p in made_up)


def test_sibling_subjects_share_the_first_or_last_word():
    from circuitedit.edit.training.prompts import sibling_subjects

    pool = ["the Louvre", "Big Ben", "Babe Ruth", "Tower of London"]
    siblings = sibling_subjects("Ferrari Mondial", pool)
    assert set(siblings) == {"Ferrari Louvre", "Ferrari Ben", "Ferrari Ruth", "Ferrari London",
                             "Big Mondial", "Babe Mondial", "Tower Mondial"}
    assert "the Mondial" not in siblings and "Ferrari of" not in siblings  # function words are not names
    assert sibling_subjects("Paris", pool) == []


@torch.no_grad()  # values only
def test_leak_term_counts_only_rises_of_the_watched_tokens():
    from circuitedit.edit.training.retain import LEAK_TOLERANCE, RetainSet

    model, tokenizer = tiny_model(FAMILY, seed=SEED)
    retain = RetainSet.from_model(model, tokenizer, ["The Louvre is in", "Bees make", "Water is"])
    watched = torch.arange(40, 80)
    kl, leak = retain.kl_and_leak(model, watched=watched)
    assert float(kl) == pytest.approx(0.0, abs=1e-5) and float(leak) == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        model.get_output_embeddings().weight[40:80] *= -1  # these logits move, some up, some down
    _, leak = retain.kl_and_leak(model, watched=watched)
    change = retain.logprobs(model)[:, watched] - retain.reference_logprobs[:, watched]
    assert float(change.min()) < 0 < float(change.max())
    # falls cost nothing; rises count above the rounding tolerance
    assert float(leak) == pytest.approx(float((change - LEAK_TOLERANCE).clamp(min=0).mean()), rel=1e-4)
    kl, _ = retain.kl_and_leak(model, rows=torch.tensor([2, 0]))
    reference = retain.reference_logprobs[[2, 0]]
    direct = (reference.exp() * (reference - retain.logprobs(model, torch.tensor([2, 0])))).sum(-1).mean()
    # kl_and_leak sums entropy, cross term and lse separately (values ~1): fp32 leaves ~1e-6.
    assert float(kl) == pytest.approx(float(direct), rel=1e-4, abs=2e-6) and float(kl) > 0


def test_retain_terms_have_zero_gradient_on_the_reference_model():
    """Why train_stage may skip the retain forward at step 0 when it starts at the reference."""
    from circuitedit.edit.ia3 import attach_ia3, ia3_vectors
    from circuitedit.edit.training.retain import RetainSet

    model, tokenizer = tiny_model(FAMILY, seed=SEED)
    model = model.float()
    retain = RetainSet.from_model(model, tokenizer, ["The Louvre is in", "Bees make", "Water is"])
    working = copy.deepcopy(model)
    freeze(working)
    peft_model = attach_ia3(working, get_adapter(working), [Component(0, MLP), Component(1, MLP)])
    kl, leak = retain.kl_and_leak(peft_model.get_base_model(), watched=torch.arange(40, 80))
    (kl + leak).backward()
    grads = [p.grad for p in ia3_vectors(peft_model).values()]
    assert grads and all(g is not None and float(g.abs().max()) < 1e-5 for g in grads)


def test_a_control_baseline_taken_once_measures_what_each_edit_would():
    """Many edits of one model (CLI --requests, bench) take the control snapshot once."""
    from circuitedit.data.facts import control_facts
    from circuitedit.evaluate.snapshots import control_snapshot

    model, tokenizer = tiny_model(FAMILY, SEED)
    model = model.float()
    config = small_config()
    request = EditRequest(**REQUEST)
    own = edit(model, tokenizer, request, config)
    baseline = control_snapshot(model, tokenizer, request, control_facts(), config.evaluate)
    shared = edit(model, tokenizer, request, config, control_baseline=baseline)
    assert len(shared.rows) == len(own.rows)
    for a, b in zip(shared.rows, own.rows, strict=True):  # margins: batch composition moves the last bits
        expected = None if b.margin_before is None else pytest.approx(b.margin_before, abs=1e-4)
        assert a.margin_before == expected
        assert {**a.to_dict(), "margin_before": None} == {**b.to_dict(), "margin_before": None}
    assert shared.metrics == own.metrics


def _stated_facts(model, tokenizer, prompts: list[str]):
    """Facts whose answer is the tiny model's own first continuation word: facts it states."""
    from circuitedit.core.generate import greedy_continuations
    from circuitedit.data.facts import Fact

    texts = greedy_continuations(model, tokenizer, prompts, max_new_tokens=3)
    return [Fact(p, t.split()[0]) for p, t in zip(prompts, texts, strict=True) if t.split()]


def _upcast(model, tokenizer, request, components, context, config, progress=None):
    """An editor that trains nothing but returns its copy in fp32, as ft-full does."""
    from circuitedit.edit.base import EditOutcome

    return EditOutcome(model=model.float(), stages=[])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["none", "upcast"])
def test_an_edit_that_changes_nothing_keeps_every_stated_fact(monkeypatch, method, dtype):
    """The identity edit keeps every stated control and neighbour fact, near-ties included: the
    before and after snapshots run the same batches in the same dtypes (an editor that upcasts to
    fp32 is compared with the base model re-measured in fp32)."""
    from circuitedit.data.facts import control_facts
    from circuitedit.edit.base import EDITORS

    _upcast.uses_localization = False
    monkeypatch.setitem(EDITORS, "upcast", _upcast)
    model, tokenizer = tiny_model(FAMILY, SEED)
    model.to(dtype)
    controls = _stated_facts(model, tokenizer, [f.prompt for f in control_facts()[:24]])
    neighbours = _stated_facts(model, tokenizer, ["The Louvre is located in the city of", "Michael Jordan plays"])
    request = EditRequest(**{**REQUEST, "neighbourhood": [{"prompt": f.prompt, "answer": f.answer} for f in neighbours]})
    config = small_config()
    config.method = method
    config.evaluate.known_margin = 1e9  # every stated fact is a "near-tie": none may be dropped
    result = edit(model, tokenizer, request, config, controls=controls)
    # Stated in `dtype`; re-measured in fp32 for the upcast edit, where a near-tie may go either way.
    assert result.metrics["control_stated_before"] >= (len(controls) if method == "none" else 10)
    assert result.metrics["f_control"] == 1.0 and result.metrics["control_lost"] == 0
    assert result.metrics["f_control_clear"] is None  # the margin column counted none of them
    assert result.metrics["neighbourhood_accuracy"] == 1.0
