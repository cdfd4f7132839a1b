"""Built-in fact sets shipped with the package (written for it, not taken from a dataset).

control facts: facts the embedded model answers correctly, used only to measure F_control.
retain prompts: a disjoint set whose next-token distributions training keeps (KL term).
subject pool: other entities, for corrupted runs and same-template regularisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from .requests import EditRequest


@dataclass(frozen=True)
class Fact:
    prompt: str
    answer: str
    relation: str = ""


def _data_text(name: str) -> str:
    return resources.files("circuitedit").joinpath("data").joinpath(name).read_text(encoding="utf-8")


def control_facts() -> list[Fact]:
    return [Fact(**json.loads(line)) for line in _data_text("control_facts.jsonl").splitlines() if line.strip()]


def retain_prompts() -> list[str]:
    return [line.strip() for line in _data_text("retain_prompts.txt").splitlines() if line.strip()]


def subject_pool() -> list[str]:
    return [line.strip() for line in _data_text("subject_pool.txt").splitlines() if line.strip()]


def demo_requests() -> list[EditRequest]:
    return [EditRequest.from_dict(json.loads(line)) for line in _data_text("demo_requests.jsonl").splitlines() if line.strip()]


def controls_for(request: EditRequest, facts: list[Fact] | None = None) -> list[Fact]:
    """Control facts unrelated to the request: none mentions its subject or shares its prompt."""
    facts = control_facts() if facts is None else facts
    subject = request.subject.casefold()
    return [f for f in facts if subject not in f.prompt.casefold() and f.prompt != request.text]
