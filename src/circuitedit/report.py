"""Human-readable tables (rich) and atomic writing of edit outputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .evaluate.scoring import contains_object

# The file every output directory of its kind holds: an existing --out without it is refused.
EDIT_FILE = "edit.json"
LOCALIZATION_FILE = "localization.json"

METRIC_LABELS = {
    "new_fact_accuracy": "new-fact accuracy (edit prompt)",
    "paraphrase_accuracy": "new-fact accuracy (held-out paraphrases)",
    "paraphrase_accuracy_stated": "  ... of those that gave the old fact before",
    "train_paraphrase_accuracy": "new-fact accuracy (training paraphrases)",
    "question_accuracy": "new-fact accuracy (question form, chat)",
    "forget_rate": "forget rate (old object not given as the answer)",
    "forget_rate_strict": "  ... counting a mention inside the subject too",
    "old_fact_stated_before": "old fact stated before the edit (same prompts)",
    "f_control": "F_control (stated control facts kept)",
    "f_control_clear": "  ... of those stated by a clear margin",
    "neighbourhood_accuracy": "neighbourhood accuracy (stated neighbours kept)",
    "efficacy": "efficacy P(new) > P(old)",
    "paraphrase_efficacy": "paraphrase efficacy",
}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def components_table(result_dict: dict, limit: int = 20) -> Table:
    table = Table(title=f"Localized components ({result_dict.get('localization', {}) and result_dict['localization']['method']})")
    for col in ("rank", "component", "layer", "kind", "head", "score"):
        table.add_column(col)
    for rank, comp in enumerate(result_dict["components"][:limit], 1):
        table.add_row(str(rank), comp["name"], str(comp["layer"]), comp["kind"],
                      "-" if comp["head"] is None else str(comp["head"]), _fmt(comp["score"]))
    return table


EDIT_ROW_KINDS = ("edit", "train_paraphrase", "test_paraphrase", "question")
FACT_ROW_KINDS = {"control": "control facts", "neighbourhood": "neighbourhood facts"}


def changed_fact_rows(rows: list[dict]) -> list[dict]:
    """The control and neighbourhood rows that count against the edit: stated before, not after."""
    return [r for r in rows if r["kind"] in FACT_ROW_KINDS and r["expected_before"] and not r["expected_after"]]


def unchanged_summary(rows: list[dict]) -> list[str]:
    """One line per fact kind: "58 of 62 control facts unchanged" (of those the model stated)."""
    lines = []
    for kind, noun in FACT_ROW_KINDS.items():
        stated = [r for r in rows if r["kind"] == kind and r["expected_before"]]
        if stated:
            kept = sum(r["expected_after"] for r in stated)
            lines.append(f"{kept} of {len(stated)} {noun} the model stated still stated")
    return lines


def rows_table(result_dict: dict) -> Table:
    """The edit's own probes, then only the control and neighbourhood facts the edit lost."""
    table = Table(title="Before / after (greedy continuations)")
    for col in ("probe", "prompt", "before", "after", "ok"):
        table.add_column(col, overflow="fold")
    rows = result_dict["rows"]
    for row in [r for r in rows if r["kind"] in EDIT_ROW_KINDS] + changed_fact_rows(rows):
        ok = row["expected_after"] and (row["kind"] in FACT_ROW_KINDS or not row["old_after"])
        table.add_row(row["kind"], row["prompt"], row["before"].strip()[:40], row["after"].strip()[:40],
                      "[green]yes[/]" if ok else "[red]no[/]")
    return table


# metric -> the prefix of its counts (`<prefix>_stated_before`, `<prefix>_clear_before`, `<prefix>_lost`)
COUNTED = {"f_control": ("control", "stated"), "f_control_clear": ("control", "clear"),
           "neighbourhood_accuracy": ("neighbourhood", "stated"),
           "neighbourhood_accuracy_clear": ("neighbourhood", "clear")}


def metric_value(metrics: dict, key: str) -> str:
    """The value, with "(kept/counted)" for the retention metrics: "0.952 (59/62)"."""
    text = _fmt(metrics.get(key))
    if key in COUNTED and metrics.get(key) is not None:
        noun, which = COUNTED[key]
        total = metrics.get(f"{noun}_{which}_before")
        if total:
            text += f" ({round(metrics[key] * total)}/{total})"
    return text


def metrics_table(metrics: dict, timings: dict | None = None) -> Table:
    table = Table(title="Metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in METRIC_LABELS.items():
        if metrics.get(key) is not None:
            table.add_row(label, metric_value(metrics, key))
    if timings:
        table.add_row("total seconds", _fmt(timings.get("total_s")))
    return table


def print_edit(result_dict: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(components_table(result_dict))
    console.print(rows_table(result_dict))
    for line in unchanged_summary(result_dict["rows"]):
        console.print(line)
    console.print(metrics_table(result_dict["metrics"], result_dict["timings"]))
    note = old_fact_note(result_dict)
    if note:
        console.print(f"[yellow]note:[/] {note}")


def old_fact_note(result_dict: dict) -> str | None:
    """A warning when the unedited model did not give the old object on the edit prompt: there
    the forget rate counts the absence of something that was never said."""
    edit_rows = [r for r in result_dict["rows"] if r["kind"] == "edit"]
    if not edit_rows or contains_object(edit_rows[0]["before"], result_dict["request"]["old_object"]):
        return None
    return (f"before the edit the model did not answer {result_dict['request']['old_object']!r} to the edit "
            f"prompt (it continued {edit_rows[0]['before'].strip()[:40]!r}), so the forget rate "
            "shows nothing it knew was removed")


def check_output_directory(path: Path) -> None:
    """Refuse an output directory path that is an existing file (or lies under one)."""
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"output path {path}: {path.parent} is not a directory")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output path {path} exists and is not a directory")


def check_output_target(target: Path, marker: str) -> None:
    """Refuse an output path that holds anything but an earlier output of this kind (a directory
    with `marker` in it) or nothing: the atomic swap replaces the whole directory."""
    target = Path(target)
    check_output_directory(target)
    if target.exists() and any(target.iterdir()) and not (target / marker).is_file():
        raise ValueError(f"output path {target} is a non-empty directory without {marker}, not an earlier "
                         "output; it would be replaced, so choose a new path")


@contextmanager
def atomic_directory(target: Path, marker: str | None = None):
    """Yield a temporary directory beside `target`; it replaces `target` only on success.

    marker: a file every output of this kind has; an existing `target` without it is refused
    (check_output_target), never replaced."""
    target = Path(target)
    if marker is not None:
        check_output_target(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def write_edit_outputs(result, out_dir: Path, tokenizer, save_model: bool = False,
                       extra: Callable[[Path], None] | None = None) -> Path:
    """edit.json, report.html, both adapters in PEFT format and (optionally) the edited model, atomically."""
    with atomic_directory(out_dir, marker=EDIT_FILE) as tmp:
        write_json(tmp / EDIT_FILE, result.to_dict())
        for artifact in result.outcome.adapters:
            artifact.save(tmp / "adapters" / artifact.name)
        if save_model:
            model = result.model
            if hasattr(model, "merge_and_unload"):
                from .edit.ia3 import merge_fp32

                model = merge_fp32(model)
            model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
        if extra:
            extra(tmp)
        from .html_report import REPORT_FILE, edit_html  # late: html_report imports this module

        # Rendered from the written edit.json, so what `extra` added (the model's name) shows too.
        edit_dict = json.loads((tmp / EDIT_FILE).read_text(encoding="utf-8"))
        (tmp / REPORT_FILE).write_text(edit_html(edit_dict), encoding="utf-8")
    return out_dir
