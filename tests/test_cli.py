"""The command line fails on bad input with one line on stderr, exit code 2 and no output."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from circuitedit.cli import main
from tiny import tiny_tokenizer

EIFFEL_ARGS = ["--subject", "Eiffel Tower", "--prompt", "The Eiffel Tower is located in the city of",
               "--old", "Paris", "--new", "Rome"]


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory):
    """A saved tiny GPT-NeoX model: a real causal LM of an architecture we do not support."""
    path = tmp_path_factory.mktemp("tiny-neox")
    tokenizer = tiny_tokenizer()
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _assert_user_error(argv, capsys, out_dir, *expected):
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("circuitedit: error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}")]  # no temp dirs
    return lines[0]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"--prompt": "The Louvre is located in the city of"}, ("prompt:", "'Eiffel Tower' not found")),
        ({"--old": " "}, ("old_object:", "must not be empty")),
        ({"--old": ""}, ("missing --old",)),
        ({"--new": "paris"}, ("new_object:", "equals old_object")),
        ({"--new": "Zanzibar"}, ("new_object:", "cannot express target 'Zanzibar'")),
        ({"--old": "Xanadu"}, ("old_object:", "cannot express target 'Xanadu'")),
    ],
)
def test_bad_request_on_the_command_line(saved_tiny, tmp_path, capsys, changes, expected):
    args = EIFFEL_ARGS
    for flag, value in changes.items():
        args = _replace(args, flag, value)
    out = tmp_path / "out"
    argv = ["edit", *args, "--model", str(saved_tiny), "--dtype", "fp32", "--device", "cpu", "--out", str(out)]
    _assert_user_error(argv, capsys, out, *expected)


def test_unknown_field_in_a_requests_file(saved_tiny, tmp_path, capsys):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"subject": "Eiffel Tower", "prompt": "The {} is located in the city of",
                                    "old_object": "Paris", "new_object": "Rome", "colour": "red"}) + "\n")
    out = tmp_path / "out"
    argv = ["edit", "--requests", str(requests), "--model", str(saved_tiny), "--device", "cpu", "--out", str(out)]
    _assert_user_error(argv, capsys, out, str(requests), "record 0", "unknown field(s): colour")


def test_bad_config_file(saved_tiny, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"editor": {"unlearn": {"max_stepz": 3}}}))
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--out", str(out)]
    _assert_user_error(argv, capsys, out, "config:", "max_stepz")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("config.json", "{not json", ("config.json: invalid JSON at line 1",)),
        ("config.yaml", "localize: {top_k: [", ("config.yaml: invalid YAML",)),
        ("missing.json", None, ("missing.json: no such file",)),
        ("config.json", json.dumps({"editor": {"learn": {"lr": -1}}}), ("editor.learn.lr: must be positive",)),
        ("config.json", json.dumps({"localize": {"kinds": "neurons"}}), ("localize.kinds:", "'neurons'")),
        ("config.json", json.dumps({"method": "nosuch"}), ("unknown method 'nosuch'",)),
        ("config.json", json.dumps({"localize": {"method": "psychic"}}), ("psychic",)),
    ],
)
def test_unreadable_or_invalid_config_names_the_file_or_field(saved_tiny, tmp_path, capsys, name, text, expected):
    config = tmp_path / name
    if text is not None:
        config.write_text(text)
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--out", str(out)]
    _assert_user_error(argv, capsys, out, *expected)


def test_top_k_zero_fails_before_any_work(saved_tiny, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--top-k", "0", "--model", str(saved_tiny), "--out", str(out)]
    _assert_user_error(argv, capsys, out, "localize.top_k: must be at least 1, got 0")


def test_a_selection_of_no_components_fails_with_its_reason(saved_tiny, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"localize": {"max_layer_fraction": 0.1}}))  # 2 layers: none below layer 0
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--dtype", "fp32",
            "--device", "cpu", "--out", str(out)]
    _assert_user_error(argv, capsys, out, "no components to edit", "max_layer_fraction 0.1")


def test_unsupported_architecture(neox_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--model", str(neox_dir), "--dtype", "fp32", "--device", "cpu", "--out", str(out)]
    line = _assert_user_error(argv, capsys, out, "unsupported architecture 'gpt_neox'", "supported:")
    for model_type in ("gemma3_text", "gpt2", "llama", "phi3", "qwen2"):
        assert model_type in line


@pytest.mark.parametrize("config, expected", [
    # mamba2's defaults are a 2.7B model: building it before refusing it took minutes and ~11 GB
    ({"model_type": "mamba2"}, "unsupported architecture 'mamba2'"),
    ({"model_type": "no-such-family"}, "cannot load model"),
    ({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}, "cannot load model"),
])
def test_the_architecture_is_checked_before_any_weights(tmp_path, capsys, config, expected):
    """A directory holding only a config.json: an unsupported family fails on the config alone; a
    supported one (a multimodal config's text model too) goes on to the missing files."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--model", str(model_dir), "--device", "cpu", "--out", str(out)]
    line = _assert_user_error(argv, capsys, out, expected)
    assert ("supported: gemma3_text" in line) == ("unsupported" in expected)


def test_not_a_model_directory(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--model", str(empty), "--device", "cpu", "--out", str(out)]
    _assert_user_error(argv, capsys, out, "not a model directory")


@pytest.mark.parametrize("missing", ["{tmp}/no-such-model", "./no-such-model", "runs/eiffel/model"])
def test_a_missing_model_directory_is_named_without_asking_the_hub(missing, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["edit", *EIFFEL_ARGS, "--model", missing.format(tmp=tmp_path), "--device", "cpu", "--out", str(out)]
    _assert_user_error(argv, capsys, out, "no such model directory")


def test_ask_answers_with_a_tiny_model(saved_tiny, capsys):
    code = main(["ask", "The Eiffel Tower is located in", "Paris is", "--model", str(saved_tiny),
                 "--dtype", "fp32", "--device", "cpu", "--max-new-tokens", "3", "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["prompt"] for row in lines] == ["The Eiffel Tower is located in", "Paris is"]
    assert all(isinstance(row["continuation"], str) for row in lines)


SMALL_CONFIG = {"localize": {"top_k": 2, "kinds": "both", "positions": "all"},
                "editor": {"unlearn": {"max_steps": 2}, "learn": {"max_steps": 2}, "n_prefixes": 1,
                           "n_template_neighbours": 2},
                "evaluate": {"max_new_tokens": 2}}


@pytest.mark.parametrize("command", ["edit", "localize"])
@pytest.mark.parametrize("kind", ["file", "directory"])
def test_an_existing_path_that_is_not_an_earlier_output_is_refused_untouched(saved_tiny, tmp_path, capsys,
                                                                             command, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("keep")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep")
    args = EIFFEL_ARGS[:6] if command == "localize" else EIFFEL_ARGS  # localize takes no --new
    code = main([command, *args, "--model", str(saved_tiny), "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert ("exists and is not a directory" if kind == "file" else "non-empty directory without") in err[0]
    assert (out if kind == "file" else out / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or backup left beside it


def test_an_earlier_output_is_replaced_by_a_new_edit(saved_tiny, tmp_path, capsys):
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_CONFIG))
    out = tmp_path / "runs" / "eiffel"
    argv = ["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--dtype", "fp32",
            "--device", "cpu", "--out", str(out), "--json"]
    assert main(argv) == 0
    first = json.loads((out / "edit.json").read_text())
    (out / "stale.txt").write_text("from the first run")
    assert main(_replace(argv, "--new", "London")) == 0
    capsys.readouterr()
    second = json.loads((out / "edit.json").read_text())
    assert first["request"]["new_object"] == "Rome" and second["request"]["new_object"] == "London"
    assert not (out / "stale.txt").exists()  # the whole directory was swapped, not merged
    assert sorted(p.name for p in out.parent.iterdir()) == ["eiffel"]


def test_audit_refuses_an_output_path_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "audit.txt"
    out.write_text("keep")
    assert main(["audit", "--edit", str(tmp_path / "an-edit"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not a directory" in err[0], err
    assert out.read_text() == "keep"


@pytest.mark.parametrize(("device", "expected"), [("cuda:99", "device 'cuda:99'"), ("banana", "not a torch device")])
def test_a_device_this_machine_lacks_is_one_line(saved_tiny, capsys, device, expected):
    assert main(["ask", "The Eiffel Tower is in", "--model", str(saved_tiny), "--device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_a_truncated_weights_file_is_one_line(saved_tiny, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["ask", "The Eiffel Tower is in", "--model", str(broken), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot load model '{broken}'" in err[0], err


def test_a_corrupt_model_cache_names_the_cache_to_delete(saved_tiny, tmp_path, monkeypatch):
    import shutil

    from circuitedit.core import paths
    from circuitedit.models import loading

    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
    cached = tmp_path / "models" / f"gemma3-270m-{loading._CACHE_VERSION}"
    shutil.copytree(saved_tiny, cached)
    (cached / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(loading.ModelLoadError, match=f"from its cache {cached} \\(delete that directory"):
        loading.load_model(device="cpu")


@pytest.fixture(scope="module")
def tiny_edit_dir(saved_tiny, tmp_path_factory):
    """An `edit --out` directory of a short edit of the tiny model."""
    root = tmp_path_factory.mktemp("tiny-edit")
    config = root / "small.json"
    config.write_text(json.dumps(SMALL_CONFIG))
    out = root / "edit"
    assert main(["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--dtype", "fp32",
                 "--device", "cpu", "--out", str(out), "--json"]) == 0
    return out


def _corrupt_edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda d: (d / "edit.json").write_text('{"request": '), ("edit.json: not valid JSON",)),
        (lambda d: _corrupt_edit_json(d / "edit.json", lambda x: x.pop("request")), ("no 'request' object",)),
        (lambda d: _corrupt_edit_json(d / "edit.json", lambda x: x["request"].update(old_object="")),
         ("edit.json: request: old_object:",)),
        (lambda d: (d / "adapters" / "learn" / "adapter_model.safetensors").write_bytes(b"x"),
         ("adapters/learn: cannot load the adapter",)),
        (lambda d: (d / "adapters" / "unlearn" / "adapter_config.json").unlink(), ("has no PEFT adapter",)),
    ],
)
def test_a_corrupt_edit_directory_fails_the_audit_in_one_line(tiny_edit_dir, saved_tiny, tmp_path, capsys,
                                                              corrupt, expected):
    import shutil

    broken = tmp_path / "edit"
    shutil.copytree(tiny_edit_dir, broken)
    corrupt(broken)
    argv = ["audit", "--edit", str(broken), "--model", str(saved_tiny), "--device", "cpu", "--no-relearn"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("circuitedit: error: "), err
    for text in expected:
        assert text in err[0], err[0]
    assert not (broken / "audit.json").exists()


@pytest.mark.parametrize("save_model", [False, True])
def test_ask_answers_from_an_edit_directory_as_the_edit_measured(saved_tiny, tmp_path, capsys, save_model):
    config = tmp_path / "small.json"
    # a learn stage strong enough to change the tiny model's continuation, so base and edit differ
    config.write_text(json.dumps({**SMALL_CONFIG, "editor": {**SMALL_CONFIG["editor"],
                                                             "learn": {"max_steps": 30, "lr": 0.2}}}))
    out = tmp_path / "edit"
    argv = ["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--dtype", "fp32",
            "--device", "cpu", "--out", str(out), "--json"]
    assert main(argv + (["--save-model"] if save_model else [])) == 0
    capsys.readouterr()
    saved = json.loads((out / "edit.json").read_text())
    row = next(r for r in saved["rows"] if r["kind"] == "edit")
    expected = row["after"]
    assert expected != row["before"]
    prompt = saved["request"]["prompt"].replace("{}", saved["request"]["subject"])
    assert main(["ask", prompt, "--edit", str(out), "--max-new-tokens", str(SMALL_CONFIG["evaluate"]["max_new_tokens"]),
                 "--dtype", "fp32", "--device", "cpu", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["continuation"] == expected


def test_ask_on_an_edit_directory_without_adapters_or_model_says_so(tiny_edit_dir, tmp_path, capsys):
    import shutil

    bare = tmp_path / "edit"
    shutil.copytree(tiny_edit_dir, bare)
    shutil.rmtree(bare / "adapters")
    assert main(["ask", "x", "--edit", str(bare), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no adapters/ and no model/" in err[0], err


def test_json_edit_of_a_fact_the_model_never_stated_notes_it_on_stderr(saved_tiny, tmp_path, capsys):
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_CONFIG))
    assert main(["edit", *EIFFEL_ARGS, "--config", str(config), "--model", str(saved_tiny), "--dtype", "fp32",
                 "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout is the one JSON object, nothing else
    assert data["metrics"]["old_fact_stated_before"] == 0.0  # a random model never says " Paris"
    notes = [line for line in captured.err.splitlines() if line.startswith("note (Eiffel Tower):")]
    assert len(notes) == 1 and "did not answer 'Paris'" in notes[0]


@pytest.mark.parametrize("argv, expected", [
    (["localize", "--positions", "bogus"], "--positions: invalid choice: 'bogus'"),
    (["edit", "--kinds", "neurons"], "--kinds: invalid choice: 'neurons'"),
    (["edit", "--top-k", "many"], "--top-k: invalid int value: 'many'"),
    (["edit", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
])
def test_a_bad_flag_is_one_line_without_the_usage(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and expected in err and "usage:" not in err, err


def test_the_hub_client_is_quiet_so_an_offline_error_stays_one_line(tmp_path, capsys):
    import logging

    assert main(["ask", "--model", str(tmp_path / "nope"), "hi"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # without a network each retried request would log a warning line before the error
    assert logging.getLogger("huggingface_hub").getEffectiveLevel() >= logging.ERROR


def test_edit_n_takes_the_files_first_requests(saved_tiny, tmp_path, capsys):
    from pathlib import Path

    requests = Path(__file__).parent / "fixtures" / "ce_requests.jsonl"  # 2 requests
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_CONFIG))
    out = tmp_path / "out"
    argv = ["edit", "--requests", str(requests), "--n", "1", "--config", str(config), "--model", str(saved_tiny),
            "--dtype", "fp32", "--device", "cpu", "--no-reference-cache", "--out", str(out), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["request"]["subject"] == "Eiffel Tower"  # one edit: one object, written to OUT itself
    assert (out / "edit.json").exists()


def test_edit_flags_override_the_saved_configs_selection(saved_tiny, tmp_path, capsys):
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_CONFIG))  # kinds both, positions all, top_k 2
    argv = ["edit", *EIFFEL_ARGS, "--config", str(config), "--positions", "last", "--kinds", "mlps", "--top-k", "1",
            "--model", str(saved_tiny), "--dtype", "fp32", "--device", "cpu", "--no-reference-cache", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    selection = {k: result["config"]["localize"][k] for k in ("positions", "kinds", "top_k")}
    assert selection == {"positions": "last", "kinds": "mlps", "top_k": 1}
    assert len(result["components"]) == 1 and result["components"][0]["kind"] == "mlp"


def test_the_method_help_names_every_registered_editor(capsys):
    from circuitedit.edit import EDITORS

    with pytest.raises(SystemExit):
        main(["edit", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--method METHOD the editing method")
    help_text = text[start:text.index("--config CONFIG", start)].replace("- ", "-")
    assert all(name in help_text for name in EDITORS), help_text
