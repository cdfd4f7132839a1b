"""Terminal tables (rich) of an edit: components, before/after rows, metrics."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..core.matching import contains_object

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


CHECKPOINT_LABELS = {
    "new_fact_accuracy": "new objects stated (every fact edited so far)",
    "efficacy": "efficacy P(new) > P(old)",
    "paraphrase_efficacy": "paraphrase P(new) > P(old)",
    "neighbourhood_specificity": "neighbourhood P(true) > P(new)",
    "earlier_retained": "earlier edits still stated",
    "f_control": "F_control against the unedited model",
    "generation_entropy": "n-gram entropy of generations",
    "generation_entropy_before": "  ... of the unedited model",
}


def checkpoint_table(measures: dict) -> Table:
    """The measurements of a model holding many edits, after one batch (`sequence_measures`)."""
    table = Table(title=f"after {measures['edits']} edited facts")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, label in CHECKPOINT_LABELS.items():
        table.add_row(label, _fmt(measures.get(key)))
    return table


def history_table(history: dict) -> Table:
    """One row per kept edit of an edit history (`circuitedit history`)."""
    table = Table(title=f"edit history of {history.get('model') or 'the default model'}"
                        f" ({len(history['reverted'])} reverted)")
    for column in ("edit", "method", "fact", "stages", "new fact when made", "F_control when made"):
        table.add_column(column)
    for entry in history["edits"]:
        for index, (request, metrics) in enumerate(zip(entry["requests"], entry["metrics"], strict=True)):
            fact = f"{request['subject']}: {request['old_object']} -> {request['new_object']}"
            first = index == 0
            table.add_row(str(entry["id"]) if first else "", entry["method"] if first else "", fact,
                          ", ".join(entry["stages"]) if first else "", _fmt(metrics.get("new_fact_accuracy")),
                          _fmt(metrics.get("f_control")))
    return table
