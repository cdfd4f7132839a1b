"""Many edits in one model (`edit --sequential`): the history records each edit and rebuilds the
model from its files, resumes, refuses conflicts and damage in one line, and reverts an edit
exactly (a delta subtracted, an IA3 scaling divided out) with its fact answered as before."""

from __future__ import annotations

import json

import pytest

from circuitedit import EditConfig
from circuitedit.data.requests import EditRequest
from circuitedit.workflows.history import EditHistory, HistoryError
from circuitedit.workflows.sequence import max_difference, revert, run_sequence
from tiny import tiny_model

FACTS = [EditRequest(subject=s, prompt="Tourists visit the {}", old_object="Paris", new_object=n, relation="visit")
         for s, n in (("Eiffel Tower", "Rome"), ("Mount Fuji", "Berlin"), ("Big Ben", "Tokyo"))]


def config(method: str) -> EditConfig:
    keyed = {"layer": 0, "value_steps": 15, "covariance_tokens": 96, "cache_covariance": False,
             "weight_decay": 0.0, "kl_weight": 0.0}
    return EditConfig.from_dict({
        "method": method, "localize": {"kinds": "mlps", "positions": "all", "top_k": 1},
        "editor": {"n_prefixes": 1, "n_template_neighbours": 2, "keyed": keyed,
                   "learn": {"lr": 0.3, "margin": 0.3, "old_gap": 0.0, "max_steps": 30}},
        "evaluate": {"max_new_tokens": 3}})


@pytest.fixture(scope="module")
def rome_history(tmp_path_factory):
    model, tokenizer = tiny_model("llama")
    root = tmp_path_factory.mktemp("seq") / "history"
    seen = []
    run_sequence(model, tokenizer, FACTS[:2], EditHistory.start(root, "tiny"), config("rome"), controls=[],
                 on_batch=seen.append)
    # resumed with every request: the two it holds are skipped, the third is made
    run_sequence(model, tokenizer, FACTS, EditHistory.open(root), config("rome"), controls=[], on_batch=seen.append)
    return model, tokenizer, root, seen


def test_the_history_records_each_edit_and_measures_after_each_batch(rome_history):
    _, _, root, seen = rome_history
    history = EditHistory.open(root)
    assert [e.id for e in history.entries] == [1, 2, 3]
    assert [e.requests[0].subject for e in history.entries] == ["Eiffel Tower", "Mount Fuji", "Big Ben"]
    assert all(e.stages == ["rome"] and (root / e.directory / "adapters" / "rome").is_dir() for e in history.entries)
    assert [c["edits"] for c in history.checkpoints] == [1, 2, 3] == [m["edits"] for m in seen]
    last = history.checkpoints[-1]
    assert len(last["per_fact"]) == 3 and 0.0 <= last["earlier_efficacy"] <= 1.0
    assert last["generation_entropy_before"] > 0


def test_a_revert_takes_the_delta_out_exactly_and_the_fact_is_answered_as_before(rome_history, tmp_path):
    model, tokenizer, root, _ = rome_history
    copy_root = tmp_path / "history"
    import shutil

    shutil.copytree(root, copy_root)
    history = EditHistory.open(copy_root)
    report = revert(history, model, tokenizer, 2, config("rome"))
    assert report.max_weight_difference < 1e-6
    assert report.answered_as_unedited == 1.0
    reopened = EditHistory.open(copy_root)
    assert [e.id for e in reopened.entries] == [1, 3] and reopened.reverted[0]["id"] == 2
    assert max_difference(reopened.edited_model(model), history.edited_model(model)) == 0.0
    with pytest.raises(HistoryError, match="no edit 2 \\(edits held: 1, 3\\)"):
        revert(reopened, model, tokenizer, 2)


def test_an_ia3_scaling_is_divided_out(tmp_path):
    model, tokenizer = tiny_model("llama")
    history = run_sequence(model, tokenizer, FACTS[:2], EditHistory.start(tmp_path / "h", None),
                           config("learn-only"), controls=[])
    report = revert(history, model, tokenizer, 1, config("learn-only"))
    assert report.max_weight_difference < 1e-5  # division by the saved scaling, against the rebuild without it


def test_conflicts_and_damage_fail_in_one_line(rome_history, tmp_path):
    model, tokenizer, root, _ = rome_history
    changed = EditRequest(**{**FACTS[0].to_dict(), "new_object": "Madrid"})
    with pytest.raises(HistoryError, match="'Eiffel Tower' .* already edited in this history \\(to 'Rome'\\)"):
        run_sequence(model, tokenizer, [changed], EditHistory.open(root), config("rome"), controls=[])
    with pytest.raises(ValueError, match="requests 1 and 2 both rewrite"):
        run_sequence(model, tokenizer, [FACTS[0], changed], EditHistory.start(tmp_path / "new", None),
                     config("rome"), controls=[])
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "history.json").write_text("{not json")
    with pytest.raises(HistoryError, match="history.json: damaged"):
        EditHistory.open(damaged)
    (damaged / "history.json").write_text(json.dumps({"edits": [json.loads(
        (root / "edits" / "0001" / "entry.json").read_text())]}))
    with pytest.raises(HistoryError, match="edits/0001/adapters/rome: missing"):
        EditHistory.open(damaged)
    with pytest.raises(HistoryError, match="not found"):
        EditHistory.open(tmp_path / "nothing")


def test_a_method_without_saved_stages_cannot_keep_a_history(tmp_path):
    model, tokenizer = tiny_model("llama")
    with pytest.raises(HistoryError, match="ft-full saves no adapter or weight delta"):
        run_sequence(model, tokenizer, FACTS[:1], EditHistory.start(tmp_path / "h", None), config("ft-full"),
                     controls=[])
    assert EditHistory.open(tmp_path / "h").entries == []  # nothing half-written


def test_every_edit_of_a_sequence_keys_on_the_unedited_models_statistics(monkeypatch, tmp_path):
    """The key covariance is the unedited model's for every edit (computed once, then cached),
    not the edited model's of the moment (a new fingerprint, and a new corpus pass, per edit)."""
    from circuitedit.edit import rome as rome_module

    model, tokenizer = tiny_model("llama")
    seen = []
    real = rome_module.layer_covariance
    monkeypatch.setattr(rome_module, "layer_covariance",
                        lambda source, *args, **kwargs: seen.append(source) or real(source, *args, **kwargs))
    run_sequence(model, tokenizer, FACTS[:2], EditHistory.start(tmp_path / "h", None), config("rome"), controls=[])
    assert len(seen) == 2 and all(source is model for source in seen)


def test_alphaedit_keeps_the_keys_of_earlier_edits():
    """With K_p K_pᵀ of an earlier edit in the system, a new update barely moves the earlier
    keys' outputs; without it, it moves them freely."""
    import torch

    from circuitedit.edit.alphaedit import alphaedit_layer_update

    generator = torch.Generator().manual_seed(0)
    earlier, new = torch.randn(32, 3, generator=generator), torch.randn(32, 2, generator=generator)
    new = new + earlier[:, :2]  # keys that overlap the earlier edits' ones
    values = torch.randn(16, 2, generator=generator)
    projection = torch.eye(32, dtype=torch.float64)
    free = alphaedit_layer_update(new, values, projection, 0.1)
    kept = alphaedit_layer_update(new, values, projection, 0.1, previous=(earlier @ earlier.T).double())
    moved = lambda update: float((update.double() @ earlier.double()).norm())  # noqa: E731
    assert moved(kept) < 0.1 * moved(free)


def test_a_sequence_hands_alphaedit_the_earlier_edits_keys(tmp_path):
    model, tokenizer = tiny_model("llama")
    history = run_sequence(model, tokenizer, FACTS[:2], EditHistory.start(tmp_path / "h", None),
                           config("alphaedit"), controls=[])
    assert all((tmp_path / "h" / e.directory / "adapters" / "alphaedit" / "keys.safetensors").exists()
               for e in history.entries)
    import torch

    moments = history.previous_keys()  # layer 0, the one edited: K_p K_pᵀ of the two facts' keys
    assert list(moments) == [0] and int(torch.linalg.matrix_rank(moments[0])) == 2
