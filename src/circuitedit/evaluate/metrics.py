"""Edit metrics from before/after snapshots: new-fact accuracy, forget rate, F_control, ..."""

from __future__ import annotations

from dataclasses import dataclass

from ..requests import EditRequest
from .runner import Probe, Snapshot
from .scoring import contains_object


@dataclass
class ProbeRow:
    kind: str
    prompt: str
    expected: str
    before: str
    after: str
    expected_before: bool
    expected_after: bool
    old_after: bool
    known_before: bool  # expected_before, and (controls, neighbours) not by a near-tie
    margin_before: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _mean(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def probe_rows(request: EditRequest, probes: list[Probe], before: Snapshot, after: Snapshot,
               known_margin: float = 0.0) -> list[ProbeRow]:
    rows = []
    for p in probes:
        key = (p.kind, p.prompt)
        b, a = before.continuations.get(key, ""), after.continuations.get(key, "")
        margin = before.margins.get(key)
        expected_before = contains_object(b, p.expected)
        known = expected_before and (margin is None or margin >= known_margin)
        rows.append(ProbeRow(p.kind, p.prompt, p.expected, b, a, expected_before,
                             contains_object(a, p.expected), contains_object(a, request.old_object), known, margin))
    return rows


def edit_metrics(request: EditRequest, rows: list[ProbeRow], before: Snapshot, after: Snapshot) -> dict:
    by_kind: dict[str, list[ProbeRow]] = {}
    for row in rows:
        by_kind.setdefault(row.kind, []).append(row)
    get = lambda kind: by_kind.get(kind, [])  # noqa: E731

    retained = lambda kind: _mean([r.expected_after for r in get(kind) if r.known_before])  # noqa: E731
    forget_rows = get("edit") + get("test_paraphrase")
    # Held-out phrasings on which the unedited model actually stated the old fact: only there
    # can an edit be seen to rewrite (or remove) what the model says.
    stated = [r for r in get("test_paraphrase") if contains_object(r.before, request.old_object)]

    def efficacy(kinds: tuple[str, ...]) -> float | None:
        wins = []
        for (kind, prompt, obj), lp in after.logprobs.items():
            if kind in kinds and obj == request.new_object:
                wins.append(lp > after.logprobs[(kind, prompt, request.old_object)])
        return _mean(wins)

    return {
        "new_fact_accuracy": _mean([r.expected_after for r in get("edit")]),
        "paraphrase_accuracy": _mean([r.expected_after for r in get("test_paraphrase")]),
        "train_paraphrase_accuracy": _mean([r.expected_after for r in get("train_paraphrase")]),
        "question_accuracy": _mean([r.expected_after for r in get("question")]),
        "paraphrase_accuracy_stated": _mean([r.expected_after for r in stated]),
        "forget_rate": _mean([not r.old_after for r in forget_rows]),
        "forget_rate_stated": _mean([not r.old_after for r in get("edit") + stated]),
        # A forget rate of 1 on a fact the model never stated measures nothing (report.old_fact_note).
        "old_fact_stated_before": _mean([contains_object(r.before, request.old_object) for r in forget_rows]),
        "f_control": retained("control"),
        "control_known_before": sum(r.known_before for r in get("control")),
        "control_near_ties_excluded": sum(r.expected_before and not r.known_before for r in get("control")),
        "neighbourhood_accuracy": retained("neighbourhood"),
        "efficacy": efficacy(("edit",)),
        "paraphrase_efficacy": efficacy(("test_paraphrase",)),
    }
