"""The unedited model's reference answers, kept between edits: keyed so they are never stale."""

from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch

from circuitedit import EditRequest, edit
from circuitedit.cli import main
from circuitedit.core.reference_cache import ReferenceCache, model_fingerprint
from circuitedit.data.facts import control_facts, subject_pool
from circuitedit.edit.training.prompts import template_scan_prompts
from circuitedit.evaluate import snapshots as runner
from circuitedit.evaluate.snapshots import Snapshot, cached_control_snapshot, control_snapshot
from test_pipeline_tiny import REQUEST, small_config
from tiny import tiny_model


def test_the_fingerprint_follows_every_weight():
    model, _ = tiny_model("gemma3_text", 0)
    fingerprint = model_fingerprint(model)
    assert model_fingerprint(model) == fingerprint == model_fingerprint(copy.deepcopy(model))
    for name, _ in model.named_parameters():
        changed = copy.deepcopy(model)
        with torch.no_grad():
            dict(changed.named_parameters())[name].view(-1)[-1] += 1
        assert model_fingerprint(changed) != fingerprint, name
    assert model_fingerprint(model.float().to(torch.bfloat16)) != fingerprint  # another dtype


def test_an_entry_is_computed_once_then_read_back_by_a_new_process(tmp_path):
    model, _ = tiny_model("llama", 0)
    calls = []

    def compute():
        calls.append(1)
        return {"answer": [1.5, "x"]}

    first = ReferenceCache(tmp_path).for_model(model)
    assert first.get_or_compute("kind", {"a": 1}, compute) == {"answer": [1.5, "x"]}
    assert first.get_or_compute("kind", {"a": 1}, compute) == {"answer": [1.5, "x"]}  # from memory
    fresh = ReferenceCache(tmp_path).for_model(model)  # as a later process would
    assert fresh.get_or_compute("kind", {"a": 1}, compute) == {"answer": [1.5, "x"]}
    assert len(calls) == 1
    fresh.get_or_compute("kind", {"a": 2}, compute)  # another key
    other, _ = tiny_model("llama", 1)
    ReferenceCache(tmp_path).for_model(other).get_or_compute("kind", {"a": 1}, compute)  # another model
    assert len(calls) == 3
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["not json", json.dumps({"key": {"other": 1}, "value": 7}), json.dumps([1])])
def test_a_damaged_or_foreign_entry_is_recomputed_and_replaced(tmp_path, damage):
    model, _ = tiny_model("llama", 0)
    ReferenceCache(tmp_path).for_model(model).get_or_compute("kind", {}, lambda: 1)
    (entry,) = tmp_path.glob("kind-*.json")
    entry.write_text(damage)
    assert ReferenceCache(tmp_path).for_model(model).get_or_compute("kind", {}, lambda: 2) == 2
    assert json.loads(entry.read_text())["value"] == 2


def test_a_cache_that_cannot_be_written_costs_nothing_but_speed(tmp_path):
    model, _ = tiny_model("llama", 0)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert ReferenceCache(blocked / "sub").for_model(model).get_or_compute("kind", {}, lambda: 3) == 3


def test_a_snapshot_survives_its_json_form_exactly():
    model, tokenizer = tiny_model("gemma3_text", 0)
    model = model.float()
    config = small_config()
    snap = control_snapshot(model, tokenizer, EditRequest(**REQUEST), control_facts()[:10], config.evaluate)
    back = Snapshot.from_json(json.loads(json.dumps(snap.to_json())))
    assert back == snap and back.continuations and back.margins


def test_edits_that_read_the_cache_measure_what_a_fresh_snapshot_would(tmp_path, monkeypatch):
    model, tokenizer = tiny_model("gemma3_text", 0)
    model = model.float()
    config, request = small_config(), EditRequest(**REQUEST)
    baseline = control_snapshot(model, tokenizer, request, control_facts(), config.evaluate)
    plain = edit(model, tokenizer, request, config, control_baseline=baseline)
    first = edit(model, tokenizer, request, config, references=ReferenceCache(tmp_path))
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()} == {"controls", "prefixes", "scan"}

    def never(*args, **kwargs):
        raise AssertionError("recomputed a stored reference")

    monkeypatch.setattr(runner, "control_snapshot", never)
    monkeypatch.setattr(importlib.import_module("circuitedit.edit.training.prompts"), "generated_prefixes", never)
    scanned = []
    scan_module = importlib.import_module("circuitedit.core.prompt_scan")
    real_scan = scan_module.iter_last_token_hidden

    def recording_scan(model, tokenizer, prompts, *args, **kwargs):
        scanned.extend(prompts)
        return real_scan(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(scan_module, "iter_last_token_hidden", recording_scan)
    second = edit(model, tokenizer, request, config, references=ReferenceCache(tmp_path))
    template_prompts = set(template_scan_prompts(request, subject_pool()))
    assert not template_prompts & set(scanned)  # the template's scan was read back, not run again
    for result in (first, second):
        assert [r.to_dict() for r in result.rows] == [r.to_dict() for r in plain.rows]
        assert result.metrics == plain.metrics and result.timings["fingerprint_s"] > 0


def test_a_changed_model_never_reads_another_models_answers(tmp_path):
    model, tokenizer = tiny_model("gemma3_text", 0)
    model = model.float()
    config, request = small_config(), EditRequest(**REQUEST)
    facts = control_facts()[:10]
    cache = ReferenceCache(tmp_path)
    cached_control_snapshot(cache.for_model(model), model, tokenizer, request, facts, config.evaluate)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # a different model: other answers
    expected = control_snapshot(model, tokenizer, request, facts, config.evaluate)
    got = cached_control_snapshot(cache.for_model(model), model, tokenizer, request, facts, config.evaluate)
    assert got == expected


def test_the_cli_keeps_references_unless_told_not_to(saved_tiny, tmp_path, capsys, monkeypatch):
    from test_cli import EIFFEL_ARGS, SMALL_CONFIG

    config = tmp_path / "config.json"
    config.write_text(json.dumps(SMALL_CONFIG))
    root = tmp_path / "references"
    monkeypatch.setattr(ReferenceCache, "default", classmethod(lambda cls: cls(root)))
    args = ["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--dtype", "fp32",
            "--device", "cpu", "--json"]
    assert main([*args, "--no-reference-cache"]) == 0
    assert not root.exists()
    assert main(args) == 0
    assert {p.name.split("-")[0] for p in root.glob("*.json")} == {"controls", "prefixes", "scan"}
    capsys.readouterr()
