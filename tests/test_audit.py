"""The audit's measurements on tiny random models (and a probe on synthetic data)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from circuitedit.audit.access import indirect_prompts
from circuitedit.audit.choices import NO_DISTRACTORS, pick_distractors
from circuitedit.audit.data import same_relation_facts, template_subject
from circuitedit.audit.formats import format_prompts, subject_variants
from circuitedit.audit.latent import (
    FINAL,
    SUBJECT,
    ProbeFact,
    cross_validated_probe,
    layer_states,
    lens_ranks,
    probe_predict,
    subject_last_index,
)
from circuitedit.audit.relearn import (
    LeakError,
    check_no_leak,
    finetune,
    other_fact_examples,
    subject_examples,
)
from circuitedit.audit.run import AuditConfig, audit_edit, stage_models
from circuitedit.audit.status import MEASURED, SKIPPED
from circuitedit.audit.verdict import HARD, NOT, SOFT, verdict
from circuitedit.core.tokens import encode_text
from circuitedit.data.facts import demo_requests
from circuitedit.data.requests import EditRequest
from circuitedit.workflows.audit_files import write_audit
from tiny import tiny_model

FAST = AuditConfig(probe_steps=20, relearn_steps=2, require_known=False, use_subject_pool=False,
                   max_new_tokens=4)


@pytest.fixture(scope="module")
def gemma():
    return tiny_model("gemma3_text")


def _synthetic(n_per_class: int, classes: int, noise: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    dim, layers = 32, 3
    candidates = torch.randn(classes, dim, generator=gen)
    labels = torch.arange(classes).repeat(n_per_class)
    states = torch.randn(len(labels), layers, dim, generator=gen) * noise
    states[:, 1] += candidates[labels] * 3  # layer 1 encodes the object, layers 0 and 2 do not
    states[:, 2] = torch.randn(len(labels), dim, generator=gen)
    return states, labels, candidates


def test_probe_reaches_known_accuracy_on_synthetic_data():
    states, labels, candidates = _synthetic(6, 4, noise=1.0)
    acc, weights = cross_validated_probe(states, labels, candidates, steps=60, folds=4)
    assert acc[1] >= 0.95  # the encoding layer is read on held-out examples
    assert acc[2] <= 0.6  # pure noise stays near chance (0.25)
    probs = probe_predict(weights, states, candidates)
    assert probs.shape == (len(labels), 3, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(len(labels), 3))


def test_probe_held_out_accuracy_is_not_training_accuracy():
    # Labels unrelated to the states: a probe can fit them, but held out it is at chance.
    states, _, candidates = _synthetic(5, 4, noise=1.0)
    labels = torch.randint(0, 4, (len(states),), generator=torch.Generator().manual_seed(1))
    acc, _ = cross_validated_probe(states[:, 2:], labels, candidates, steps=60, folds=5)
    assert acc[0] <= 0.55


def test_layer_states_and_lens(gemma):
    model, tokenizer = gemma
    fact = ProbeFact("The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris")
    states = layer_states(model, tokenizer, [fact])
    n_layers = model.config.num_hidden_layers
    assert states[FINAL].shape == (1, n_layers + 1, model.config.hidden_size)
    # The last entry is the model's own final state: its lens is the next-token distribution.
    ids = torch.tensor([encode_text(tokenizer, fact.prompt)])
    logits = model(ids).logits[0, -1]
    token = int(logits.argmax())
    assert lens_ranks(model, states[FINAL][0], token)[-1] == 1
    index = subject_last_index(tokenizer, fact.prompt, fact.subject)
    assert tokenizer.convert_ids_to_tokens(encode_text(tokenizer, fact.prompt)[index]) == "Tower"
    assert not torch.equal(states[SUBJECT], states[FINAL])


def test_same_relation_facts_exclude_the_edited_subject():
    request = demo_requests()[0]
    facts = same_relation_facts(request)
    assert facts and all("Eiffel" not in f.prompt for f in facts)
    assert template_subject(request.prompt, "The Colosseum is located in the city of") == "Colosseum"
    assert template_subject(request.prompt, "Paris is big") is None
    assert {f.subject for f in facts} >= {"Colosseum", "Kremlin"}


def test_relearning_never_trains_on_the_edited_fact(gemma):
    request = demo_requests()[0]
    facts = same_relation_facts(request) + [ProbeFact(request.text, request.subject, request.old_object),
                                            ProbeFact("The Eiffel Tower is in", "Eiffel Tower", "Paris")]
    examples = other_fact_examples(request, facts)
    assert examples
    assert all(request.subject not in p and p not in request.training_prompts + request.held_out_prompts
               for p, _ in examples)
    with pytest.raises(LeakError):
        check_no_leak(request, [(request.text, request.old_object)])
    sentences = subject_examples(request)
    assert sentences and all(request.subject in s and "Paris" not in s for _, s in sentences)
    # A subject that names its own old object ("The Icelandic Dream": Icelandic) cannot be
    # written about without the old object: that attack is skipped, the edit is still audited.
    icelandic = EditRequest(subject="The Icelandic Dream", prompt="The language of {} is",
                            old_object="Icelandic", new_object="Tamil")
    assert subject_examples(icelandic) == []
    # The attack really changes weights, on a copy only.
    model, tokenizer = gemma
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, tokenizer, examples, steps=2, lr=1e-3)
    assert any(not torch.equal(tuned.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_indirect_prompts_and_formats_cover_the_kinds(gemma):
    _, tokenizer = gemma
    request = demo_requests()[0]
    kinds = {p.kind for p in indirect_prompts(tokenizer, request, same_relation_facts(request))}
    assert kinds >= {"question", "template", "long_context", "few_shot", "cue"}
    formats = format_prompts(tokenizer, request)
    assert {"cloze", "question", "subject_lower", "subject_upper"} <= set(formats)
    assert subject_variants(request)["subject_upper"].startswith("The EIFFEL TOWER")


@pytest.mark.parametrize("family", ["gemma3_text", "llama"])
def test_audit_edit_end_to_end_on_a_tiny_model(family, tmp_path):
    model, tokenizer = tiny_model(family)
    request = demo_requests()[0]
    stage1, stage2 = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p in stage2.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    report = audit_edit(model, tokenizer, request, stage1, stage2, FAST)
    data = report.to_dict()
    assert data["verdict"]["label"] in (HARD, SOFT, NOT)
    assert set(data["latent"]["models"]) == {"base", "stage1", "stage2"}
    assert data["relearn"]["attacks"]["other_facts"]["train_examples"] > 0
    assert "multiple_choice" in {r["kind"] for r in data["access"]["models"]["base"]["rows"]}
    assert all(data[s]["status"] == MEASURED for s in ("latent", "access", "formats", "relearn"))
    assert data["latent"]["probe"]["status"] == data["access"]["multiple_choice"]["status"] == MEASURED
    # the tiny word-level tokenizer cannot write the subject sentences: only that attack is skipped
    assert set(data["verdict"]["not_measured"]) <= {"relearning (subject sentences)"}
    assert data["timings"]["total_s"] > 0
    json_path, md_path = write_audit(report, tmp_path)
    assert json.loads(json_path.read_text())["verdict"] == data["verdict"]
    text = md_path.read_text()
    assert "Verdict" in text and "Relearning" in text and "Audit cost" in text


# A relation the built-in facts do not have ("{} plays sport"): no probe facts, no distractors.
NO_FACTS = dict(subject="Foo", prompt="{} plays sport", old_object="tennis", new_object="baseball")


def _sections(data: dict) -> dict[str, str]:
    return {s: data[s]["status"] for s in ("latent", "access", "formats", "relearn")}


def test_audit_marks_what_it_could_not_measure(gemma, tmp_path):
    model, tokenizer = gemma
    request = EditRequest(**NO_FACTS)
    assert same_relation_facts(request) == []
    report = audit_edit(model, tokenizer, request, None, copy.deepcopy(model), FAST)
    data = report.to_dict()
    assert _sections(data) == {"latent": MEASURED, "access": MEASURED, "formats": MEASURED, "relearn": MEASURED}
    for section in ("access", "formats"):
        assert data[section]["multiple_choice"] == {"status": SKIPPED, "reason": NO_DISTRACTORS}
    assert "multiple_choice" not in {r["kind"] for r in data["access"]["models"]["base"]["rows"]}
    assert "multiple_choice" not in data["formats"]["models"]["stage2"]
    assert data["latent"]["probe"]["status"] == SKIPPED and "0 other fact(s)" in data["latent"]["probe"]["reason"]
    assert data["latent"]["models"]["stage2"]["final"]["lens_old_rank"]  # the logit lens is still measured
    assert data["relearn"]["attacks"]["other_facts"] == {"status": SKIPPED,
                                                          "reason": "no other facts of the relation to train on"}
    v = data["verdict"]
    assert {"multiple choice", "linear probes", "relearning (other facts)"} <= set(v["not_measured"])
    assert "Not measured: " in v["sentence"] and "multiple choice (no distractor objects" in v["sentence"]
    _, md_path = write_audit(report, tmp_path)
    text = md_path.read_text()
    assert text.count(f"Multiple choice: Skipped: {NO_DISTRACTORS}.") == 2  # access and formats
    assert "Linear probe: Skipped: 0 other fact(s)" in text
    assert "Relearn other facts: Skipped: no other facts of the relation to train on." in text
    assert json.loads((tmp_path / "audit.json").read_text())["access"]["multiple_choice"]["status"] == SKIPPED


def test_audit_takes_distractors_from_the_neighbourhood_and_can_skip_relearning(gemma, tmp_path):
    model, tokenizer = gemma
    neighbours = [{"prompt": "Bar can be found in", "answer": "football"},
                  {"prompt": "Baz can be found in", "answer": "Tennis"},  # the old object: never a distractor
                  {"prompt": "Qux can be found in", "answer": "basketball"}]
    request = EditRequest(**NO_FACTS, neighbourhood=neighbours)
    config = dataclasses.replace(FAST, relearn=False)  # audit --no-relearn
    report = audit_edit(model, tokenizer, request, None, copy.deepcopy(model), config)
    data = report.to_dict()
    options = ["tennis", "baseball", "football", "basketball"]
    assert data["access"]["multiple_choice"] == {"status": MEASURED, "options": options}
    assert data["formats"]["models"]["stage2"]["multiple_choice"]["options"] == options
    assert "multiple_choice" in {r["kind"] for r in data["access"]["models"]["stage2"]["rows"]}
    assert data["relearn"] == {"status": SKIPPED, "reason": "disabled (--no-relearn)"}
    assert "relearning (disabled (--no-relearn))" in data["verdict"]["sentence"]
    assert "multiple choice" not in data["verdict"]["not_measured"]
    _, md_path = write_audit(report, tmp_path)
    text = md_path.read_text()
    assert "## 3. Relearning attack\n\nSkipped: disabled (--no-relearn)." in text
    assert "Multiple choice: Skipped" not in text and "| multiple_choice |" in text


def test_pick_distractors_falls_back_in_order():
    request = EditRequest(**NO_FACTS, neighbourhood=[{"prompt": "Bar can be found in", "answer": "Golf"}])
    assert pick_distractors(request, ["Tennis", "baseball"], ["golf", "chess", "rugby"]) == ["Golf", "chess"]
    assert pick_distractors(request, ["cricket"], None) == ["cricket", "Golf"]
    assert pick_distractors(EditRequest(**NO_FACTS), [], ["BASEBALL", "", "rugby"]) == ["rugby"]
    assert pick_distractors(EditRequest(**NO_FACTS), ["tennis"], None) == []


def _fake_audit(cloze_forget: float, lens_rank: int, access_old: bool) -> dict:
    latent = {pos: {"lens_old_rank": [1, 50, lens_rank], "probe_reads_old_layers": [],
                    "probe_heldout_accuracy": [0.0, 0.0, 0.0]} for pos in ("subject_last", "final")}
    return {
        "request": {"old_object": "Paris"},
        "latent": {"models": {"stage2": latent}},
        "access": {"models": {"stage2": {"old_kinds": ["cue"] if access_old else [],
                                         "rows": [{"kind": "cue", "old": access_old}]}}},
        "formats": {"models": {"stage2": {"cloze": {"forget_rate": cloze_forget}}}},
        "relearn": None,
    }


def test_verdict_labels():
    assert verdict(_fake_audit(0.0, 1, True))["label"] == NOT
    assert verdict(_fake_audit(1.0, 500, False))["label"] == HARD
    soft = verdict(_fake_audit(1.0, 3, True))
    assert soft["label"] == SOFT and {"logit lens", "indirect prompts"} <= set(soft["reaching"])


def test_verdict_names_the_parts_it_did_not_measure():
    audit = _fake_audit(1.0, 500, False)
    audit["latent"]["probe"] = {"status": SKIPPED, "reason": "1 other fact(s)"}
    for pos in ("subject_last", "final"):
        audit["latent"]["models"]["stage2"][pos].update(probe_reads_old_layers=[], probe_heldout_accuracy=[])
    audit["access"]["multiple_choice"] = {"status": SKIPPED, "reason": "no distractors"}
    audit["formats"]["multiple_choice"] = {"status": SKIPPED, "reason": "no distractors"}
    audit["relearn"] = {"status": SKIPPED, "reason": "disabled (--no-relearn)"}
    hard = verdict(audit)
    assert hard["label"] == HARD
    assert hard["not_measured"] == {"linear probes": "1 other fact(s)", "multiple choice": "no distractors",
                                    "relearning": "disabled (--no-relearn)"}
    tried, _, missing = hard["sentence"].partition(" Not measured: ")
    assert "(logit lens, indirect prompts, formats)" in tried
    assert missing == "linear probes (1 other fact(s)); multiple choice (no distractors); relearning (disabled (--no-relearn))."


def test_stage_models_rebuild_an_edit_result(gemma):
    from circuitedit.workflows.pipeline import EditConfig, edit

    model, tokenizer = gemma
    config = EditConfig()
    config.localize.method = "random"
    config.localize.top_k = 2
    config.editor.unlearn.max_steps = config.editor.learn.max_steps = 2
    config.editor.n_prefixes = 0
    config.editor.n_template_neighbours = 0
    result = edit(model, tokenizer, demo_requests()[0], config)
    stage1, stage2 = stage_models(model, result)
    ids = torch.tensor([encode_text(tokenizer, demo_requests()[0].text)])
    assert torch.allclose(stage2(ids).logits, result.model(ids).logits, atol=1e-4)
    assert not torch.allclose(stage1(ids).logits, model(ids).logits)
