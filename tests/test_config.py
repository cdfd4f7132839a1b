"""Every config dataclass checks its own fields at construction, naming the field, and carries one
line of help per field that the CLI's flags reuse (issue 51)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from circuitedit.audit.run import AuditConfig
from circuitedit.cli import build_parser
from circuitedit.core.config import ConfigValueError, field_help
from circuitedit.edit import EditorConfig, StageConfig
from circuitedit.evaluate.snapshots import EvalConfig
from circuitedit.localize import LocalizeConfig
from circuitedit.workflows.bench.config import BenchConfig
from circuitedit.workflows.pipeline import EditConfig

CONFIGS = [LocalizeConfig, StageConfig, EditorConfig, EvalConfig, EditConfig, BenchConfig, AuditConfig]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LocalizeConfig(top_k=0), "localize.top_k: must be at least 1, got 0"),
        (lambda: LocalizeConfig(kinds="neurons"), "localize.kinds: expected heads, mlps or both, got 'neurons'"),
        (lambda: LocalizeConfig(fraction=1.5), "localize.fraction: must be null or in (0, 1], got 1.5"),
        (lambda: LocalizeConfig(top_k="8"), "localize.top_k: expected an integer, got '8'"),
        (lambda: StageConfig(lr=0.0), "stage.lr: must be positive, got 0.0"),
        (lambda: StageConfig(min_steps=99), "stage.min_steps: must be in [0, max_steps], got 99"),
        (lambda: StageConfig(beta1=1.0), "stage.beta1: must be in [0, 1), got 1.0"),
        (lambda: StageConfig(margin=float("nan")), "stage.margin: expected a number, got nan"),
        (lambda: EditorConfig(n_prefixes=-1), "editor.n_prefixes: must be at least 0, got -1"),
        (lambda: EditorConfig(mlp_scaling="weights"), "editor.mlp_scaling: expected hidden or output, got 'weights'"),
        (lambda: EditorConfig(uncertainty="Not sure about {object}."), "editor.uncertainty: may use {subject}"),
        (lambda: EditorConfig(learn={"lr": 0.1}), "editor.learn: expected a StageConfig, got dict"),
        (lambda: EvalConfig(batch_size=0), "evaluate.batch_size: must be at least 1, got 0"),
        (lambda: EvalConfig(known_margin=-1.0), "evaluate.known_margin: must be at least 0, got -1.0"),
        (lambda: EditConfig(method=3), "config.method: expected a string, got 3"),
        (lambda: EditConfig(method="nosuch"), "unknown method 'nosuch'"),
        (lambda: BenchConfig(data="facts.jsonl", n=0), "bench.n: must be at least 1, got 0"),
        (lambda: BenchConfig(data="facts.jsonl", methods=[]), "bench.methods: expected a non-empty list"),
        (lambda: BenchConfig(data="facts.jsonl", fmt="parquet"), "bench.fmt: expected auto, jsonl, "),
        (lambda: AuditConfig(probe_folds=1), "audit.probe_folds: must be 0 (leave-one-out) or at least 2, got 1"),
        (lambda: AuditConfig(min_probe_accuracy=2.0), "audit.min_probe_accuracy: must be in [0, 1], got 2.0"),
        (lambda: AuditConfig(relearn="yes"), "audit.relearn: expected true or false, got 'yes'"),
    ],
)
def test_a_bad_value_fails_at_construction_naming_the_field(build, message):
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("config_class", CONFIGS)
def test_defaults_construct_and_every_field_has_one_line_of_help(config_class):
    config = config_class(data="facts.jsonl") if config_class is BenchConfig else config_class()
    config.validate()
    for item in fields(config_class):
        text = field_help(config_class, item.name)
        assert text and "\n" not in text, item.name


def test_a_value_set_after_construction_is_caught_by_validate():
    config = EditConfig()
    config.localize.top_k = 0
    with pytest.raises(ConfigValueError, match=r"^localize\.top_k: must be at least 1, got 0$"):
        config.validate()
    config.localize.top_k = 4
    config.editor.learn.margin = -1.0
    with pytest.raises(ConfigValueError, match=r"^editor\.learn\.margin: must be at least 0, got -1\.0$"):
        config.validate()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"localize": {"top_k": 0}}, "localize.top_k: must be at least 1, got 0"),
        ({"editor": {"learn": {"max_steps": 0}}}, "editor.learn.max_steps: must be at least 1, got 0"),
        ({"editor": {"unlearn": {"unit_fraction": 2}}}, "editor.unlearn.unit_fraction: must be null or in (0, 1], got 2"),
        ({"editor": {"lora_lr": -1}}, "editor.lora_lr: must be positive, got -1"),
        ({"evaluate": {"max_new_tokens": "ten"}}, "evaluate.max_new_tokens: expected an integer, got 'ten'"),
    ],
)
def test_from_dict_names_a_bad_nested_value_as_section_field(data, message):
    with pytest.raises(ValueError) as caught:
        EditConfig.from_dict(data)
    assert str(caught.value) == message


def test_field_help_can_show_the_default_and_rejects_an_unknown_field():
    assert field_help(LocalizeConfig, "top_k", with_default=True).endswith(" (default 8)")
    assert field_help(LocalizeConfig, "fraction", with_default=True) == field_help(LocalizeConfig, "fraction")
    with pytest.raises(KeyError, match="topk"):
        field_help(LocalizeConfig, "topk")


def _flag_help(command: str, flag: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a.help for a in sub._actions if flag in a.option_strings)


@pytest.mark.parametrize(
    ("command", "flag", "config_class", "name"),
    [
        ("edit", "--top-k", LocalizeConfig, "top_k"),
        ("edit", "--kinds", LocalizeConfig, "kinds"),
        ("edit", "--localizer", LocalizeConfig, "method"),
        ("edit", "--method", EditConfig, "method"),
        ("localize", "--fraction", LocalizeConfig, "fraction"),
        ("bench", "--n", BenchConfig, "n"),
        ("bench", "--max-scan", BenchConfig, "max_scan"),
        ("bench", "--dtype", BenchConfig, "dtype"),
        ("audit", "--relearn-steps", AuditConfig, "relearn_steps"),
    ],
)
def test_a_flag_shows_its_config_field_help(command, flag, config_class, name):
    assert _flag_help(command, flag).startswith(field_help(config_class, name))


def test_the_cli_help_text_renders(capsys):
    """Guards argparse's %-formatting of the reused help lines (a bare % would break -h)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "-h"])
    assert field_help(BenchConfig, "generation_tokens") in " ".join(capsys.readouterr().out.split())
