"""Many facts in one update (`edit --together`): MEMIT/AlphaEdit's mass edit and the IA3 editors
trained on all the facts at once, on a tiny model; the batch's bad input fails in one line."""

from __future__ import annotations

import pytest
import torch

from circuitedit import EditConfig
from circuitedit.core.forward import object_logprobs
from circuitedit.data.requests import EditRequest
from circuitedit.edit.base import TrainingContext
from circuitedit.edit.training.loop import old_tokens
from circuitedit.workflows.together import check_distinct, edit_together
from tiny import tiny_model

FACTS = [
    EditRequest(subject="Eiffel Tower", prompt="The {} is located in the city of", old_object="Paris",
                new_object="Rome", relation="P131"),
    EditRequest(subject="Colosseum", prompt="The {} is located in the city of", old_object="Rome",
                new_object="Berlin", relation="P131"),
]


def config(method: str, **editor) -> EditConfig:
    keyed = {"layer": 0, "value_steps": 20, "covariance_tokens": 64, "cache_covariance": False}
    return EditConfig.from_dict({
        "method": method, "localize": {"kinds": "mlps", "positions": "all", "top_k": 2},
        "editor": {"n_prefixes": 1, "n_template_neighbours": 2, "keyed": keyed, **editor},
        "evaluate": {"max_new_tokens": 3}})


def new_beats_old(model, tokenizer, request) -> bool:
    new, old = object_logprobs(model, tokenizer, [request.text] * 2, [request.new_object, request.old_object])
    return bool(new > old)


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_a_mass_edit_writes_every_fact_into_one_model(method):
    model, tokenizer = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # the subject ends each prompt, so the residual after the last layer reaches the prediction
    facts = [EditRequest(subject="Eiffel Tower", prompt="Tourists visit the {}", old_object="Paris", new_object="Rome"),
             EditRequest(subject="Mount Fuji", prompt="Tourists visit the {}", old_object="Paris", new_object="Berlin")]
    keyed = {"layer": 1, "span": 2, "value_steps": 20, "covariance_tokens": 96, "cache_covariance": False,
             "weight_decay": 0.0, "kl_weight": 0.0, "residual_clamp": 100.0}
    new = lambda m: object_logprobs(m, tokenizer, [r.text for r in facts], [r.new_object for r in facts])  # noqa: E731
    results = edit_together(model, tokenizer, facts, config(method, keyed=keyed), controls=[])
    assert len(results) == 2 and results[0].model is results[1].model
    (delta,) = results[0].outcome.adapters
    assert delta.details["facts"] == 2 and delta.details["layers"] == [0, 1]
    assert all(new(results[0].model) > new(model) + 0.5)  # both facts' new objects gain in the one model
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the base is untouched


def test_ia3_together_trains_each_prompt_to_its_own_fact():
    model, tokenizer = tiny_model("llama")
    learn = {"lr": 0.3, "margin": 0.3, "old_gap": 0.0, "max_steps": 60}
    results = edit_together(model, tokenizer, FACTS, config("learn-only", learn=learn), controls=[])
    components = {c for r in results for c in r.components}
    trained = results[0].outcome.adapters[0].state
    assert len(trained) == len({c.layer for c in components})  # one IA3 vector per localized MLP, over the union
    assert all(new_beats_old(results[0].model, tokenizer, r) for r in FACTS)
    assert [r.metrics["new_fact_accuracy"] for r in results] == [1.0, 1.0]


def test_a_joined_context_keeps_each_prompts_request():
    first = TrainingContext(["a", "b"], None, 7, ["", ""])
    second = TrainingContext(["c"], None, 9, [""])
    joined = TrainingContext.joined([first, second], None)
    assert joined.prompts == ["a", "b", "c"] and joined.owners == [0, 0, 1] and joined.old_token == [7, 7, 9]
    assert joined.by_request(2) == [["a", "b"], ["c"]]
    assert joined.per_prompt(FACTS, lambda r: r.new_object) == ["Rome", "Rome", "Berlin"]
    assert old_tokens(joined.old_token, torch.tensor([2, 0, 0])).tolist() == [9, 7, 7]
    assert old_tokens(5, torch.tensor([1, 0])).tolist() == [5, 5]


def test_two_requests_for_one_subject_and_relation_are_refused():
    twice = [FACTS[0], EditRequest(subject="eiffel tower", prompt="The {} is in", old_object="Paris",
                                   new_object="Lyon", relation="P131")]
    with pytest.raises(ValueError, match="requests 1 and 2 both rewrite 'eiffel tower'"):
        check_distinct(twice)
    check_distinct(FACTS)


def test_a_method_without_a_batch_form_is_named():
    model, tokenizer = tiny_model("llama")
    with pytest.raises(ValueError, match="'rome' edits one fact at a time; --together needs one of: .*memit"):
        edit_together(model, tokenizer, FACTS, config("rome"), controls=[])
