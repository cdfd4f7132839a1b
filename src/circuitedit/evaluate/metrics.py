"""Edit metrics from before/after snapshots: new-fact accuracy, forget rate, F_control, ...

Definitions (docs/metrics.md): a fact is *stated* when the greedy continuation names its answer.
F_control and neighbourhood accuracy count every control / neighbour fact the unedited model
stated; the `_clear` variants only those it stated by a first-token margin of at least
`EvalConfig.known_margin` logits. Forget and new-fact checks judge the answer: a mention of the
object inside a repetition of the subject ("the 1986 Honda Prelude") does not count; the
`_strict` variants count any mention (plain containment).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.matching import contains_object, states_object
from ..data.requests import EditRequest
from .snapshots import Probe, Snapshot

EDIT_KINDS = ("edit", "train_paraphrase", "test_paraphrase", "question")
FACT_KINDS = ("control", "neighbourhood")


@dataclass
class ProbeRow:
    kind: str
    prompt: str
    expected: str
    before: str
    after: str
    expected_before: bool  # the unedited model stated the expected answer
    expected_after: bool
    old_after: bool  # the edited model gave the old object as its answer
    clear_before: bool  # expected_before by a first-token margin >= known_margin (controls, neighbours)
    margin_before: float | None = None
    expected_after_strict: bool = False  # plain containment, a subject repetition included
    old_after_strict: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def changed(self) -> bool:
        """A stated control or neighbour fact the edit lost (what F_control counts against)."""
        return self.expected_before and not self.expected_after


def _mean(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def probe_rows(request: EditRequest, probes: list[Probe], before: Snapshot, after: Snapshot,
               known_margin: float = 0.0) -> list[ProbeRow]:
    rows = []
    for p in probes:
        key = (p.kind, p.prompt)
        b, a = before.continuations.get(key, ""), after.continuations.get(key, "")
        margin = before.margins.get(key)
        # An edit's own probes are about the request's subject; a control fact's subject is not known.
        subject = request.subject if p.kind in EDIT_KINDS else None
        expected_before = states_object(b, p.expected, subject)
        clear = expected_before and (margin is None or margin >= known_margin)
        rows.append(ProbeRow(p.kind, p.prompt, p.expected, b, a, expected_before,
                             states_object(a, p.expected, subject),
                             states_object(a, request.old_object, request.subject), clear, margin,
                             contains_object(a, p.expected), contains_object(a, request.old_object)))
    return rows


def edit_metrics(request: EditRequest, rows: list[ProbeRow], before: Snapshot, after: Snapshot) -> dict:
    by_kind: dict[str, list[ProbeRow]] = {}
    for row in rows:
        by_kind.setdefault(row.kind, []).append(row)
    get = lambda kind: by_kind.get(kind, [])  # noqa: E731

    forget_rows = get("edit") + get("test_paraphrase")
    # Held-out phrasings on which the unedited model actually stated the old fact: only there
    # can an edit be seen to rewrite (or remove) what the model says.
    stated = [r for r in get("test_paraphrase") if states_object(r.before, request.old_object, request.subject)]

    def efficacy(kinds: tuple[str, ...]) -> float | None:
        wins = []
        for (kind, prompt, obj), lp in after.logprobs.items():
            if kind in kinds and obj == request.new_object:
                wins.append(lp > after.logprobs[(kind, prompt, request.old_object)])
        return _mean(wins)

    return {
        "new_fact_accuracy": _mean([r.expected_after for r in get("edit")]),
        "paraphrase_accuracy": _mean([r.expected_after for r in get("test_paraphrase")]),
        "paraphrase_accuracy_strict": _mean([r.expected_after_strict for r in get("test_paraphrase")]),
        "train_paraphrase_accuracy": _mean([r.expected_after for r in get("train_paraphrase")]),
        "question_accuracy": _mean([r.expected_after for r in get("question")]),
        "paraphrase_accuracy_stated": _mean([r.expected_after for r in stated]),
        "forget_rate": _mean([not r.old_after for r in forget_rows]),
        "forget_rate_strict": _mean([not r.old_after_strict for r in forget_rows]),
        "forget_rate_stated": _mean([not r.old_after for r in get("edit") + stated]),
        # A forget rate of 1 on a fact the model never stated measures nothing (report.old_fact_note).
        "old_fact_stated_before": _mean([states_object(r.before, request.old_object, request.subject)
                                         for r in forget_rows]),
        **retention(get("control"), "f_control", "control"),
        **retention(get("neighbourhood"), "neighbourhood_accuracy", "neighbourhood"),
        "efficacy": efficacy(("edit",)),
        "paraphrase_efficacy": efficacy(("test_paraphrase",)),
    }


def retention(rows: list[ProbeRow], name: str, noun: str) -> dict:
    """`name`: the share of every fact the unedited model stated that the edited model still
    states; `name`_clear: the same over facts stated by a clear margin; and their counts."""
    stated = [r for r in rows if r.expected_before]
    clear = [r for r in stated if r.clear_before]
    return {name: _mean([r.expected_after for r in stated]),
            f"{name}_clear": _mean([r.expected_after for r in clear]),
            f"{noun}_stated_before": len(stated),
            f"{noun}_clear_before": len(clear),
            f"{noun}_lost": sum(r.changed for r in stated)}


def retained_share(facts, before: Snapshot, after: Snapshot, kind: str = "control") -> tuple[float | None, int]:
    """(share kept, number stated before) of `facts` (objects with .prompt and .answer) whose
    answer the `before` snapshot's continuation states: F_control over any fact set."""
    stated = [f for f in facts if contains_object(before.continuations.get((kind, f.prompt), ""), f.answer)]
    kept = [contains_object(after.continuations.get((kind, f.prompt), ""), f.answer) for f in stated]
    return _mean(kept), len(stated)
