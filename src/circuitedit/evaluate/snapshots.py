"""Snapshots: everything measured about one request on one model, before or after an edit."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import CheckedConfig, FieldChecks
from ..core.forward import object_logprobs
from ..core.generate import greedy_generate
from ..core.reference_cache import ModelReferences, tokenizer_identity
from ..core.tokens import CHAT, render_prompt, uses_chat_template
from ..data.facts import Fact
from ..data.requests import EditRequest


@dataclass
class EvalConfig(CheckedConfig):
    """How an edit is measured; `validate` runs at construction."""

    max_new_tokens: int = field(default=10, metadata={"help": "greedy tokens generated per cloze probe"})
    chat_max_new_tokens: int = field(default=24, metadata={"help": "greedy tokens generated per chat-form probe"})
    # Large batches decode faster on CPU (evidence: docs/speed.md).
    batch_size: int = field(default=128, metadata={"help": "probes evaluated per batch"})
    # F_control and neighbourhood accuracy count every fact the unedited model states; this margin
    # only defines their `_clear` columns (f_control_clear, neighbourhood_accuracy_clear): facts
    # stated with a first token that wins by at least this many logits, leaving out near-ties that
    # flip under any perturbation, even bf16 rounding (evidence: docs/metrics.md).
    known_margin: float = field(default=1.0, metadata={"help": "the _clear metrics count only facts stated by a first-token margin of at least this many logits"})

    def validate(self, section: str = "evaluate") -> None:
        """Raise a ValueError naming the first field (as `section.field`) that cannot measure."""
        check = FieldChecks(self, section)
        for name in ("max_new_tokens", "chat_max_new_tokens", "batch_size"):
            check.integer(name, 1)
        check.number("known_margin", 0)


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
    # (kind, prompt) -> top-1 minus top-2 next-token logit, for the kinds in MARGIN_KINDS
    margins: dict[tuple[str, str], float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-able form (tuple keys become lists); `from_json` reads it back exactly."""
        return {"continuations": [[*k, v] for k, v in self.continuations.items()],
                "logprobs": [[*k, v] for k, v in self.logprobs.items()],
                "margins": [[*k, v] for k, v in self.margins.items()]}

    @classmethod
    def from_json(cls, data: dict) -> Snapshot:
        def table(name: str) -> dict:
            return {tuple(row[:-1]): row[-1] for row in data.get(name, [])}

        return cls(table("continuations"), table("logprobs"), table("margins"))


MARGIN_KINDS = ("control", "neighbourhood")


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


def control_snapshot(model, tokenizer, request: EditRequest, controls: list[Fact], config: EvalConfig) -> Snapshot:
    """The control facts on the unedited model, taken once for many edits of that model
    (`edit(..., control_baseline=)`): they are the same for every request."""
    probes = [Probe("control", f.prompt, f.answer) for f in controls]
    return take_snapshot(model, tokenizer, request, probes, config, kinds={"control"}, margins=True)


def cached_control_snapshot(references: ModelReferences | None, model, tokenizer, request: EditRequest,
                            controls: list[Fact], config: EvalConfig) -> Snapshot:
    """`control_snapshot`, read from `references` when this model's answers to these control facts
    under these settings are stored there (no request field enters a control snapshot)."""
    if references is None:
        return control_snapshot(model, tokenizer, request, controls, config)
    key = {"facts": [[f.prompt, f.answer] for f in controls],
           "tokenizer": tokenizer_identity(tokenizer, [f.prompt for f in controls]),
           "max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size}
    stored = references.get_or_compute(
        "controls", key, lambda: control_snapshot(model, tokenizer, request, controls, config).to_json())
    return Snapshot.from_json(stored)


def take_snapshot(model, tokenizer, request: EditRequest, probes: list[Probe], config: EvalConfig,
                  kinds: set[str] | None = None, margins: bool = False) -> Snapshot:
    """Greedy continuations of every probe (of `kinds`, if given) and efficacy log-probs;
    with `margins`, the first-token margin of the control and neighbourhood probes too."""
    snap = Snapshot()
    selected = [p for p in probes if kinds is None or p.kind in kinds]
    for chat, max_new in ((False, config.max_new_tokens), (True, config.chat_max_new_tokens)):
        group = [p for p in selected if p.chat == chat]
        if not group:
            continue
        rendered = [render_prompt(tokenizer, p.prompt, CHAT) if chat else p.prompt for p in group]
        # A control or neighbour is judged only on naming its own answer, so its continuation
        # may end as soon as it has; edit and paraphrase probes run on (the old object may follow).
        stops = [p.expected if p.kind in MARGIN_KINDS else None for p in group]
        greedy = greedy_generate(model, tokenizer, rendered, max_new, config.batch_size, stop_at=stops)
        for probe, text, margin in zip(group, greedy.texts, greedy.first_margins, strict=True):
            snap.continuations[(probe.kind, probe.prompt)] = text
            if margins and probe.kind in MARGIN_KINDS and not chat:
                snap.margins[(probe.kind, probe.prompt)] = margin
    efficacy = [p for p in selected if p.kind in ("edit", "test_paraphrase", "train_paraphrase")]
    if efficacy:
        prompts = [p.prompt for p in efficacy] * 2
        objects = [request.new_object] * len(efficacy) + [request.old_object] * len(efficacy)
        values = object_logprobs(model, tokenizer, prompts, objects, config.batch_size).tolist()
        for (prompt, obj), value in zip(zip(prompts, objects, strict=True), values, strict=True):
            kind = next(p.kind for p in efficacy if p.prompt == prompt)
            snap.logprobs[(kind, prompt, obj)] = value
    return snap
