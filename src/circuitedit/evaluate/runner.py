"""Snapshots: everything measured about one request on one model, before or after an edit."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..requests import EditRequest
from .facts import Fact
from .scoring import CHAT, greedy_continuations, object_logprobs, render_prompt, uses_chat_template


@dataclass
class EvalConfig:
    max_new_tokens: int = 10
    chat_max_new_tokens: int = 24
    batch_size: int = 32


@dataclass
class Probe:
    kind: str  # edit | train_paraphrase | test_paraphrase | question | neighbourhood | control
    prompt: str  # as written (cloze or question)
    expected: str  # the answer this probe checks (new object, or the fact's own answer)
    chat: bool = False


@dataclass
class Snapshot:
    continuations: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, prompt) -> text
    logprobs: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (kind, prompt, object) -> lp


def probes_for(request: EditRequest, controls: list[Fact], tokenizer) -> list[Probe]:
    probes = [Probe("edit", request.text, request.new_object)]
    probes += [Probe("train_paraphrase", p, request.new_object) for p in request.training_prompts[1:]]
    probes += [Probe("test_paraphrase", p, request.new_object) for p in request.held_out_prompts]
    if uses_chat_template(tokenizer):
        questions = request.questions or [request.text]
        probes += [Probe("question", q, request.new_object, chat=True) for q in questions]
    probes += [Probe("neighbourhood", n["prompt"], n["answer"]) for n in request.neighbourhood]
    probes += [Probe("control", f.prompt, f.answer) for f in controls]
    return probes


def take_snapshot(model, tokenizer, request: EditRequest, probes: list[Probe], config: EvalConfig,
                  kinds: set[str] | None = None) -> Snapshot:
    """Greedy continuations of every probe (of `kinds`, if given) and efficacy log-probs."""
    snap = Snapshot()
    selected = [p for p in probes if kinds is None or p.kind in kinds]
    for chat, max_new in ((False, config.max_new_tokens), (True, config.chat_max_new_tokens)):
        group = [p for p in selected if p.chat == chat]
        if not group:
            continue
        rendered = [render_prompt(tokenizer, p.prompt, CHAT) if chat else p.prompt for p in group]
        texts = greedy_continuations(model, tokenizer, rendered, max_new, config.batch_size)
        for probe, text in zip(group, texts, strict=True):
            snap.continuations[(probe.kind, probe.prompt)] = text
    efficacy = [p for p in selected if p.kind in ("edit", "test_paraphrase", "train_paraphrase")]
    if efficacy:
        prompts = [p.prompt for p in efficacy] * 2
        objects = [request.new_object] * len(efficacy) + [request.old_object] * len(efficacy)
        values = object_logprobs(model, tokenizer, prompts, objects, config.batch_size).tolist()
        for (prompt, obj), value in zip(zip(prompts, objects, strict=True), values, strict=True):
            kind = next(p.kind for p in efficacy if p.prompt == prompt)
            snap.logprobs[(kind, prompt, obj)] = value
    return snap
