"""The edit-history commands end to end on a saved tiny model: `edit --sequential` writes a
history, `history` lists it, `ask` and `audit` read it, `revert` takes an edit out; bad input is
one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from circuitedit.cli import main

FACTS = [{"subject": s, "prompt": "Tourists visit the {}", "old_object": "Paris", "new_object": n, "relation": "visit"}
         for s, n in (("Eiffel Tower", "Rome"), ("Mount Fuji", "Berlin"))]
CONFIG = {"method": "rome", "localize": {"kinds": "mlps", "positions": "all", "top_k": 1},
          "editor": {"n_prefixes": 1, "n_template_neighbours": 2,
                     "keyed": {"layer": 0, "value_steps": 10, "covariance_tokens": 96, "cache_covariance": False}},
          "evaluate": {"max_new_tokens": 3}}


@pytest.fixture(scope="module")
def history_dir(saved_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-history")
    (root / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    (root / "config.json").write_text(json.dumps(CONFIG))
    out = root / "history"
    code = main(["edit", "--requests", str(root / "facts.jsonl"), "--sequential", "--out", str(out), "--config",
                 str(root / "config.json"), "--model", str(saved_tiny), "--device", "cpu", "--json"])
    assert code == 0
    return out


def test_history_lists_the_edits(history_dir, capsys):
    capsys.readouterr()
    assert main(["history", str(history_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["requests"][0]["subject"] for e in data["edits"]] == ["Eiffel Tower", "Mount Fuji"]
    assert [c["edits"] for c in data["checkpoints"]] == [1, 2]


def test_ask_and_audit_read_the_history(history_dir, tmp_path, capsys):
    assert main(["ask", "Tourists visit the Eiffel Tower", "--edit", str(history_dir), "--max-new-tokens", "2",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["prompt"] == "Tourists visit the Eiffel Tower"
    assert main(["audit", "--edit", str(history_dir), "--history-edit", "1", "--no-relearn", "--out",
                 str(tmp_path / "audit"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request"]["subject"] == "Eiffel Tower"


def test_revert_takes_an_edit_out(history_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "history"
    shutil.copytree(history_dir, copy)
    capsys.readouterr()
    assert main(["revert", str(copy), "--edit", "1", "--dtype", "float32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["edit_id"] == 1 and report["max_weight_difference"] < 1e-6  # in bf16: one rounding step
    assert report["answered_as_unedited"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["revert", "{dir}", "--edit", "9"], "no edit 9 (edits held: 1, 2)"),
    (["history", "{missing}"], "history.json not found"),
    (["edit", "--subject", "X", "--prompt", "{} is in", "--old", "A", "--new", "B", "--batch", "2"],
     "--batch needs --sequential"),
    (["edit", "--subject", "X", "--prompt", "{} is in", "--old", "A", "--new", "B", "--sequential"],
     "need --out DIR"),
])
def test_bad_input_is_one_line(history_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{dir}", str(history_dir)).replace("{missing}", str(tmp_path / "none")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
