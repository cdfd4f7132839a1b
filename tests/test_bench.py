"""`circuitedit bench` end to end on a tiny random model and a shipped fixture of invented facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuitedit.audit.markdown import audit_markdown
from circuitedit.cli import main
from circuitedit.core.generate import greedy_continuations
from circuitedit.data.facts import control_facts
from circuitedit.workflows.bench import BenchConfig, read_results, run_bench
from circuitedit.workflows.pipeline import EditConfig
from tiny import tiny_model

FIXTURE = Path(__file__).parent / "fixtures" / "bench_facts.jsonl"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine thread contention makes
    them ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny Gemma-3 model, and control facts it 'knows' (its own greedy answers), so
    F_control is defined for a random model."""
    root = tmp_path_factory.mktemp("bench")
    model, tokenizer = tiny_model("gemma3_text")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    prompts = [f.prompt for f in control_facts()[:8]]
    answers = [text.split()[0] for text in greedy_continuations(model, tokenizer, prompts, 10)]
    # Short training (the tiny random model never reaches the margin) keeps the test fast; a
    # random model answers everything by near-ties, so every correct answer counts as known.
    (root / "config.json").write_text(json.dumps({"editor": {"learn": {"max_steps": 6}, "n_prefixes": 1,
                                                             "n_template_neighbours": 2},
                                                  "localize": {"kinds": "both", "positions": "all"},
                                                  "evaluate": {"known_margin": 0.0}}))
    (root / "controls.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n"
                                                 for p, a in zip(prompts, answers, strict=True)))
    return root


def _args(tiny_dir: Path, out: Path, methods: str, *extra: str) -> list[str]:
    return ["bench", "--data", str(FIXTURE), "--format", "jsonl", "--n", "2", "--methods", methods,
            "--model", str(tiny_dir / "model"), "--dtype", "fp32", "--device", "cpu", "--keep-unknown",
            "--controls", str(tiny_dir / "controls.jsonl"), "--top-k", "3", "--config", str(tiny_dir / "config.json"), "--generation-tokens", "8",
            "--out", str(out), *extra]


def test_bench_two_facts_two_methods(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_args(tiny_dir, out, "none,learn-only"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("results.jsonl", "summary.json", "summary.md", "summary.png", "bench.json"):
        assert (out / name).stat().st_size > 0, name
    records = read_results(out / "results.jsonl")
    assert len(records) == 4 and not any(r.get("error") for r in records)
    assert {(r["key"], r["method"]) for r in records} == {(k, m) for k in ("0", "1") for m in ("none", "learn-only")}
    assert summary["selection"]["kept"] == [0, 1] and summary["selection"]["criterion"].startswith("none")

    none = summary["methods"]["none"]["metrics"]
    assert none["new_fact_accuracy"]["mean"] == 0.0
    assert none["f_control"]["mean"] == 1.0  # the unedited model keeps every fact it knew
    assert none["steps"]["mean"] == 0 and none["trainable_parameters"]["mean"] == 0
    assert none["mc_new_first"]["n"] == 2 and none["perplexity"]["mean"] == pytest.approx(summary["base"]["perplexity"])

    learn = summary["methods"]["learn-only"]["metrics"]
    assert learn["steps"]["mean"] > 0 and learn["trainable_parameters"]["mean"] > 0
    assert learn["efficacy"]["mean"] >= none["efficacy"]["mean"]
    assert learn["seconds"]["mean"] > 0
    by_method = {r["method"]: r for r in records if r["key"] == "0"}
    assert len(by_method["learn-only"]["components"]) == 3 and by_method["none"]["components"] == []
    # numbers come from the edit: summary means are the means of the per-fact lines
    values = [r["metrics"]["efficacy"] for r in records if r["method"] == "learn-only"]
    assert learn["efficacy"]["mean"] == pytest.approx(sum(values) / len(values))
    assert learn["efficacy"]["low"] <= learn["efficacy"]["mean"] <= learn["efficacy"]["high"]
    table = (out / "summary.md").read_text()
    assert "| metric | none | learn-only |" in table and "F_control" in table and "2 kept of 2 scanned" in table
    # every record says which code produced it; one version gives one line
    assert all(r["software"]["torch"] for r in records)
    assert table.count("- software:") == 1


def test_summary_flags_results_of_mixed_software():
    from circuitedit.workflows.bench.provenance import software_lines

    old = {"circuitedit": "0.1.0", "torch": "2.13.0", "git": "aaaa"}
    new = {**old, "git": "bbbb"}
    lines = software_lines([{"software": old}, {"software": old}, {"software": new}, {}])
    assert lines[0].startswith("- software (results from more than one version)")
    assert any("git aaaa" in line and "2 records" in line for line in lines)
    assert any("not recorded: 1 records" in line for line in lines)


def test_bench_audit_gives_each_edit_a_verdict(tiny_dir, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main([*_args(tiny_dir, out, "unlearn-then-learn,learn-only"), "--audit", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    records = read_results(out / "results.jsonl")
    assert len(records) == 4 and not any(r.get("error") for r in records)
    for record in records:
        audit = json.loads(Path(record["audit"]["file"]).read_text())
        assert audit["verdict"]["label"] == record["audit"]["verdict"]
        # one-stage methods have no stage-1 model; the audit still measures base and edit
        stages = {"base", "stage1", "stage2"} if record["method"] == "unlearn-then-learn" else {"base", "stage2"}
        assert set(audit["latent"]["models"]) == stages
        assert ("after stage 1" in audit_markdown(audit)) == ("stage1" in stages)
        m = record["metrics"]
        assert m["hard_forgetting"] + m["soft_forgetting"] + m["not_forgotten"] == 1.0
        assert m["audit_seconds"] > 0
    shares = summary["methods"]["learn-only"]["metrics"]
    assert sum(shares[k]["mean"] for k in ("hard_forgetting", "soft_forgetting", "not_forgotten")) == pytest.approx(1.0)
    assert "audit: soft forgetting" in (out / "summary.md").read_text()
    assert len(summary["audits"]) == 2 and set(summary["audits"][0]["verdicts"]) == {"unlearn-then-learn", "learn-only"}
    assert "Audit verdict per fact" in (out / "summary.md").read_text()
    # --summarize rebuilds the summary from the results alone, to the same numbers
    (out / "summary.md").unlink()
    assert main(["bench", "--out", str(out), "--summarize", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["methods"] == summary["methods"] and again["audits"] == summary["audits"]
    assert "Audit verdict per fact" in (out / "summary.md").read_text()
    assert main(["bench", "--out", str(tmp_path / "nowhere"), "--summarize"]) == 2
    assert "bench.json not found" in capsys.readouterr().err
    assert main(["bench", "--out", str(out)]) == 2 and "--data is required" in capsys.readouterr().err


def test_results_are_flushed_per_edit_and_resume_skips_them(tiny_dir, tmp_path):
    out = tmp_path / "resume"
    seen = []

    def on_record(record):  # each finished edit is on disk before the next starts
        seen.append(len(read_results(out / "results.jsonl")))

    config = BenchConfig(data=str(FIXTURE), fmt="jsonl", out=str(out), n=2, methods=["none"],
                         model=str(tiny_dir / "model"), dtype="fp32", device="cpu", keep_unknown=True,
                         controls=str(tiny_dir / "controls.jsonl"), generation_tokens=8,
                         edit=EditConfig.from_dict(json.loads((tiny_dir / "config.json").read_text())))
    run_bench(config, on_record=on_record)
    assert seen == [1, 2]

    # Interrupted mid-write: one finished line (marked) and a truncated second one.
    lines = (out / "results.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["metrics"]["seconds"] = -1.0
    (out / "results.jsonl").write_text(json.dumps(first) + "\n" + lines[1][: len(lines[1]) // 2])
    with pytest.raises(ValueError, match="--resume"):
        run_bench(config)
    seen.clear()
    summary = run_bench(config, resume=True, on_record=on_record)
    records = read_results(out / "results.jsonl")
    assert seen == [2] and len(records) == 2  # only the unfinished fact was redone
    assert records[0]["metrics"]["seconds"] == -1.0 and records[1]["key"] == "1"
    assert summary["methods"]["none"]["n"] == 2


@pytest.mark.parametrize("content, message", [
    ("", "file is empty"),
    ('{"subject": "Foo", "prompt": "Foo is in", "old_object": "Paris", "new_object": "Rome"}\n{"subject": "Bar"}\n',
     "record 1"),
    ('{"subject": "Foo", "prompt": "Foo is in", "old_object": "Paris", "new_object": "Rome"}\n{"subject": "Ba',
     "line 2"),
])
def test_bad_data_files_name_the_file_and_record(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert main(["bench", "--data", str(bad), "--format", "jsonl", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err


def test_unknown_method_is_a_user_error(tmp_path, capsys):
    assert main(["bench", "--data", str(FIXTURE), "--format", "jsonl", "--methods", "nope",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_a_user_error(tmp_path, capsys):
    out = tmp_path / "o"
    out.write_text("keep")
    assert main(["bench", "--data", str(FIXTURE), "--format", "jsonl", "--out", str(out)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert out.read_text() == "keep"


def test_fluency_and_multiple_choice_helpers():
    from circuitedit.data.datasets import load_requests
    from circuitedit.evaluate.fluency import neutral_text, ngram_entropy
    from circuitedit.evaluate.multiple_choice import choice_set, distractors_for
    from circuitedit.workflows.bench import bootstrap_interval

    assert ngram_entropy("the the the the the the") < ngram_entropy(neutral_text()[:300])
    assert len(neutral_text().split()) > 200
    low, high = bootstrap_interval([0.0, 1.0, 1.0, 0.0, 1.0], samples=200)
    assert 0.0 <= low < 0.6 < high <= 1.0
    requests = load_requests(FIXTURE, "jsonl")
    distractors = distractors_for(requests[0], requests, 2)
    assert len(distractors) == 2 and not {"Paris", "Rome"} & set(distractors)
    _, tokenizer = tiny_model("gpt2")
    choices = choice_set(tokenizer, requests[0], distractors)
    assert len(choices.prompts) == 4 and all("A. " in p and "D. " in p for p in choices.prompts)
    assert sorted(order[0] for order in choices.orders) == [0, 1, 2, 3]  # each option once at A


def test_fact_selection_counts_what_it_scanned(tmp_path):
    from circuitedit.data.datasets import load_requests
    from circuitedit.workflows.bench import knows, select_facts

    model, tokenizer = tiny_model("gemma3_text")
    sports = tmp_path / "sports.csv"
    sports.write_text("athlete,sport\nFoo Bar,basketball\nBaz Qux,football\nCharles Qux,baseball\n")
    requests = load_requests(sports, "sports")
    verdicts = knows(model, tokenizer, requests, "sports")
    selection = select_facts(model, tokenizer, requests, "sports", n=10)
    assert selection.kept == [i for i, ok in enumerate(verdicts) if ok] and selection.scanned == 3
    assert selection.criterion.startswith("true sport ranks first")
    cloze = load_requests(FIXTURE, "jsonl")
    selection = select_facts(model, tokenizer, cloze, "jsonl", n=1, keep_unknown=True)
    assert selection.kept == [0] and selection.scanned == 1


@pytest.mark.parametrize("order", [["attribution", "random"], ["random", "attribution"], ["random"]])
def test_random_control_draws_as_many_components_as_the_real_localizer(order):
    """Guards the bench's random control: per fact, as many components as the run's real localizer
    picked for that fact (here under localize.fraction, so not top_k), drawn uniformly with the
    fact's seed by plan.random_components, whichever localizer runs first; not the registered
    `random` localizer's top_k."""
    import copy

    from circuitedit.data.datasets import load_requests
    from circuitedit.workflows.bench import random_components
    from circuitedit.workflows.bench.run import FactWork, _components

    model, tokenizer = tiny_model("gemma3_text")
    request = load_requests(FIXTURE, "jsonl")[0]
    edit_config = EditConfig.from_dict({"localize": {"kinds": "both", "positions": "all", "top_k": 2,
                                                     "fraction": 0.6}})
    config = BenchConfig(data=str(FIXTURE), localizers=order, seed=1, edit=edit_config)
    fact = FactWork(7, request)
    for loc in order:
        _components(model, tokenizer, request, copy.deepcopy(edit_config), loc, 7, config, fact)
    real, drawn = fact.components["attribution"], fact.components["random"]
    assert len(real) > edit_config.localize.top_k
    assert drawn == random_components(model, len(real), "both", 1 * 100_003 + 7)
    assert set(fact.localize_s) == {"attribution", "random"}


def test_unknown_localizer_is_a_user_error_listing_each_localizer_once(tmp_path):
    """Guards the localizer check: `random` is a registered localizer, named once among the choices."""
    from circuitedit.workflows.bench import BenchError

    with pytest.raises(BenchError, match="unknown localizer 'nope'") as caught:
        run_bench(BenchConfig(data=str(FIXTURE), fmt="jsonl", localizers=["random", "nope"], out=str(tmp_path)))
    assert str(caught.value).count("random") == 1 and "attribution" in str(caught.value)


def test_dataset_controls_are_stated_never_edited_and_kept_by_an_identity_edit():
    """F_control on the dataset: only facts after the edited ones, none about an edited subject,
    only those the unedited model states; the unedited model keeps all of them."""
    import copy

    from circuitedit.data.facts import Fact
    from circuitedit.data.requests import EditRequest
    from circuitedit.evaluate.snapshots import EvalConfig, control_snapshot
    from circuitedit.workflows.bench.measures import dataset_control_retention
    from circuitedit.workflows.bench.selection import select_dataset_controls

    model, tokenizer = tiny_model("gemma3_text")
    subjects = ["France", "Italy", "Germany", "Paris", "Rome", "Berlin", "France", "Italy", "London"]
    prompts = [f"The capital of {s} is" for s in subjects]
    answers = [t.split()[0] for t in greedy_continuations(model, tokenizer, prompts, 10)]
    requests = [EditRequest(subject=s, prompt=p, old_object=a, new_object="Qux")
                for s, p, a in zip(subjects, prompts, answers, strict=True)]
    requests[5] = EditRequest(subject="Berlin", prompt=prompts[5], old_object="Baz", new_object="Qux")
    chosen = select_dataset_controls(model, tokenizer, requests, edited=[0, 1], start=2, n=4)
    # 6 and 7 are about the edited France and Italy; 5 is not stated
    assert chosen == [2, 3, 4, 8]
    facts = [Fact(requests[i].text, requests[i].old_object) for i in chosen]
    config = EvalConfig()
    baseline = control_snapshot(model, tokenizer, requests[0], facts, config)
    kept = dataset_control_retention(model, copy.deepcopy(model), tokenizer, requests[0], facts, baseline, config)
    assert kept == {"f_control_dataset": 1.0, "dataset_controls_stated": 4}


def test_speed_is_a_median_ratio_to_the_ia3_recipe_on_the_same_facts():
    from circuitedit.render.bench import speed_row
    from circuitedit.workflows.bench.summary import speed_against_baseline

    def record(key, label, seconds):
        return {"key": key, "label": label, "metrics": {"seconds": seconds}}

    records = [record("0", "unlearn-then-learn", 40.0), record("0", "rome", 10.0),
               record("1", "unlearn-then-learn", 30.0), record("1", "rome", 900.0),  # a stall on a shared CPU
               record("2", "unlearn-then-learn", 60.0), record("2", "rome", 12.0),
               record("3", "rome", 1.0), {"key": "4", "label": "rome", "error": "boom", "metrics": {}}]
    speed = speed_against_baseline(records)
    assert speed == {"unlearn-then-learn": 1.0, "rome": 4.0}  # median of 4, 1/30 and 5; fact 3 has no pair
    row = speed_row({"times_faster_than_unlearn_then_learn": speed}, ["rome", "unlearn-then-learn", "none"])
    assert row.endswith("| 4.00x | 1.00x | – |")
