"""Edit requests (validation with the field named) and the dataset loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circuitedit import EditRequest, InvalidRequestError, edit
from circuitedit.core.tokens import TargetTokenizationError
from circuitedit.data.datasets import DatasetError, load_requests
from circuitedit.workflows.pipeline import check_request
from tiny import tiny_model

FIXTURES = Path(__file__).parent / "fixtures"
BASE = {"subject": "Eiffel Tower", "prompt": "The Eiffel Tower is located in the city of",
        "old_object": "Paris", "new_object": "Rome"}


# ---- requests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["The {} is located in the city of", "The {subject} is located in the city of",
                                    "The Eiffel Tower is located in the city of  "])
def test_prompt_forms_normalise_to_one_template(prompt):
    request = EditRequest(**{**BASE, "prompt": prompt})
    assert request.prompt == "The {} is located in the city of"
    assert request.text == "The Eiffel Tower is located in the city of"
    assert request.fill(request.prompt, "Louvre") == "The Louvre is located in the city of"


def test_request_fields_and_round_trip():
    request = EditRequest(**BASE, paraphrases=["Tourists visit the Eiffel Tower in the city of"],
                          test_paraphrases=["The {subject} can be found in"],
                          neighbourhood=["The Louvre is located in the city of",
                                         {"prompt": "Mount Fuji is in", "answer": "Japan"}])
    assert request.training_prompts == ["The Eiffel Tower is located in the city of",
                                        "Tourists visit the Eiffel Tower in the city of"]
    assert request.held_out_prompts == ["The Eiffel Tower can be found in"]
    assert request.neighbourhood == [{"prompt": "The Louvre is located in the city of", "answer": "Paris"},
                                     {"prompt": "Mount Fuji is in", "answer": "Japan"}]
    again = EditRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request


@pytest.mark.parametrize(
    ("changes", "field", "detail"),
    [
        ({"prompt": "The Louvre is located in the city of"}, "prompt", "not found"),
        ({"prompt": "{} and {} are located in"}, "prompt", "once"),
        ({"prompt": "   "}, "prompt", "empty"),
        ({"subject": ""}, "subject", "empty"),
        ({"old_object": ""}, "old_object", "empty"),
        ({"new_object": "  "}, "new_object", "empty"),
        ({"new_object": "paris"}, "new_object", "equals old_object"),
        ({"new_object": "Paris"}, "new_object", "equals old_object"),
        ({"paraphrases": ["It is located in"]}, "paraphrases", "not found"),
        ({"test_paraphrases": ["Tourists visit it in"]}, "test_paraphrases", "not found"),
        ({"neighbourhood": [{"answer": "Paris"}]}, "neighbourhood", "prompt"),
    ],
)
def test_bad_request_names_the_field(changes, field, detail):
    with pytest.raises(InvalidRequestError) as info:
        EditRequest(**{**BASE, **changes})
    message = str(info.value)
    assert message.startswith(f"{field}:") and detail in message and "\n" not in message


def test_from_dict_rejects_unknown_and_missing_fields():
    with pytest.raises(InvalidRequestError, match=r"unknown field\(s\): colour"):
        EditRequest.from_dict({**BASE, "colour": "red"})
    with pytest.raises(InvalidRequestError, match="^old_object: missing"):
        EditRequest.from_dict({k: v for k, v in BASE.items() if k != "old_object"})


def test_target_the_tokenizer_cannot_express(tokenizer):
    check_request(tokenizer, EditRequest(**BASE))
    with pytest.raises(TargetTokenizationError, match=r"^new_object: .*'Zanzibar'"):
        check_request(tokenizer, EditRequest(**{**BASE, "new_object": "Zanzibar"}))
    with pytest.raises(TargetTokenizationError, match=r"^old_object: .*'Xanadu'"):
        check_request(tokenizer, EditRequest(**{**BASE, "old_object": "Xanadu"}))


def test_edit_api_fails_before_any_work_on_an_inexpressible_target(tmp_path):
    model, tokenizer = tiny_model("llama")
    with pytest.raises(ValueError, match="^new_object: "):
        edit(model, tokenizer, EditRequest(**{**BASE, "new_object": "Zanzibar"}))


# ---- dataset loaders ---------------------------------------------------------------------------
def test_load_our_jsonl():
    requests = load_requests(FIXTURES / "ce_requests.jsonl", "jsonl")
    assert [r.subject for r in requests] == ["Eiffel Tower", "Michael Jordan"]
    first, second = requests
    assert first.paraphrases == ["Tourists visit the {} in the city of"]
    assert first.neighbourhood == [{"prompt": "The Louvre is located in the city of", "answer": "Paris"}]
    assert first.case_id == "ours-1" and first.relation == "located_in"
    assert second.prompt == "{} plays the sport of" and second.new_object == "tennis"


def test_load_counterfact_simplified():
    first, second = load_requests(FIXTURES / "ce_counterfact_simple.json", "counterfact")
    assert (first.subject, first.old_object, first.new_object) == ("Eiffel Tower", "Paris", "Rome")
    assert first.prompt == "The {} is located in the city of"
    assert first.test_paraphrases == ["Tourists visit the {} in the city of"]
    assert first.neighbourhood == [{"prompt": "Mount Fuji is located in the country of", "answer": "Japan"}]
    assert first.case_id == "7"
    assert second.test_paraphrases == [] and second.neighbourhood == []
    assert second.text == "Pride and Prejudice was written by"


def test_load_counterfact_rome():
    (request,) = load_requests(FIXTURES / "ce_counterfact_rome.json", "counterfact-rome")
    assert (request.subject, request.old_object, request.new_object) == ("Michael Jordan", "basketball", "baseball")
    assert request.relation == "P641" and request.case_id == "11"
    assert request.test_paraphrases == ["Everyone knows that {} plays the sport of"]
    assert request.neighbourhood == [{"prompt": "Kobe Bryant plays the sport of", "answer": "basketball"},
                                     {"prompt": "Shaquille O'Neal plays the sport of", "answer": "basketball"}]


def test_load_zsre():
    first, second = load_requests(FIXTURES / "ce_zsre.json", "zsre")
    assert first.prompt == "What is the country of citizenship of {}?"
    assert (first.old_object, first.new_object) == ("England", "France")
    assert first.test_paraphrases == ["{} was a citizen of which country?"]
    assert first.questions == ["What is the country of citizenship of Charles Dickens?"]
    assert first.neighbourhood == [{"prompt": "nq question: who wrote the novel moby dick", "answer": "Herman Melville"}]
    # The subject is not in the question: it is appended; a paraphrase without it is dropped.
    assert second.text == "Which country is home to this mountain? Mount Fuji"
    assert second.test_paraphrases == [] and second.neighbourhood == []


def test_load_sports_is_seeded_and_never_keeps_the_old_sport():
    requests = load_requests(FIXTURES / "ce_sports.csv", "sports", seed=3)
    assert [r.subject for r in requests] == ["Michael Jordan", "Babe Ruth", "Peyton Manning"]
    assert [r.old_object for r in requests] == ["basketball", "baseball", "football"]
    for request in requests:
        assert request.new_object in ("basketball", "football", "baseball")
        assert request.new_object != request.old_object
        assert request.prompt == "{} plays the sport of" and len(request.test_paraphrases) == 2
    again = load_requests(FIXTURES / "ce_sports.csv", "sports", seed=3)
    assert [r.new_object for r in again] == [r.new_object for r in requests]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("ce_requests.jsonl", "jsonl"), ("ce_counterfact_simple.json", "counterfact"),
     ("ce_counterfact_rome.json", "counterfact-rome"), ("ce_zsre.json", "zsre"), ("ce_sports.csv", "sports")],
)
def test_auto_format_loads_each_schema_as_its_own_loader_does(name, fmt):
    assert load_requests(FIXTURES / name) == load_requests(FIXTURES / name, fmt)
    assert load_requests(FIXTURES / name, "auto") == load_requests(FIXTURES / name, fmt)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


ROME_RECORD = json.loads((FIXTURES / "ce_counterfact_rome.json").read_text())[0]


@pytest.mark.parametrize(
    ("name", "text", "fmt", "expected"),
    [
        ("empty.jsonl", "", "jsonl", "file is empty"),
        ("blank.json", "  \n\n", "counterfact", "file is empty"),
        ("empty.csv", "", "sports", "no records"),
        ("list.json", "[]", "counterfact", "no records"),
        ("truncated.jsonl", json.dumps(BASE) + "\n" + json.dumps(BASE)[:30] + "\n", "jsonl", "line 2: invalid JSON"),
        ("truncated.json", json.dumps([ROME_RECORD, ROME_RECORD])[:-40], "counterfact-rome", "invalid JSON at line"),
        ("schema.json", json.dumps([ROME_RECORD, {"requested_rewrite": {"prompt": "{} is", "subject": "X"}}]),
         "counterfact-rome", "record 1: missing field 'target_true'"),
        ("schema.jsonl", json.dumps(BASE) + "\n" + json.dumps({**BASE, "colour": "red"}) + "\n", "jsonl",
         "record 1: unknown field(s): colour"),
        ("ours-as-cf.jsonl", json.dumps(BASE) + "\n", "counterfact", "record 0: missing field 'ground_truth'"),
        ("notobject.jsonl", json.dumps(BASE) + "\n[1, 2]\n", "jsonl", "record 1: expected an object"),
        ("invalid.jsonl", json.dumps({**BASE, "new_object": "Paris"}) + "\n", "jsonl",
         "record 0: new_object: equals old_object"),
        ("noprompt.json", json.dumps([{"subject": "Mount Fuji", "src": "Where is it?", "answers": ["Japan"]}]),
         "zsre", "record 0: missing field 'alt'"),
        ("wrong.csv", "name,sport\nMichael Jordan,basketball\n", "sports",
         "must be Sports Facts (columns athlete, sport); missing column(s) athlete among name, sport"),
        ("header-only.csv", "name,sport\n", "sports", "missing column(s) athlete among name, sport"),
        ("json-as-sports.json", json.dumps([ROME_RECORD, ROME_RECORD]), "sports", "read as Sports Facts (CSV) but it is JSON"),
    ],
)
def test_bad_dataset_files_fail_naming_file_and_record(tmp_path, name, text, fmt, expected):
    path = _write(tmp_path, name, text)
    with pytest.raises(DatasetError) as info:
        load_requests(path, fmt)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_requests(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="unknown format 'parquet'"):
        load_requests(FIXTURES / "ce_requests.jsonl", "parquet")
