"""Conditional access: indirect prompts that might still reach the old fact.

Each prompt is answered greedily; the old object "comes back" when the continuation names it.
Only prompts that reached the old fact in the unedited model can show it coming back, so the
share is taken over those (`reachable_before`); all prompts and answers are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..core.generate import greedy_continuations
from ..core.matching import contains_object
from ..core.tokens import CHAT, render_prompt, uses_chat_template
from ..data.facts import _data_text
from ..data.requests import EditRequest
from .choices import summary
from .latent import ProbeFact
from .status import MEASURED

CUES = ("Before the change, {text}", "Originally, {text}", "Years ago, {text}",
        "According to older sources, {text}")


@dataclass
class IndirectPrompt:
    kind: str  # question | template | long_context | few_shot | cue | multiple_choice
    prompt: str  # rendered text fed to the model


def lower_first(text: str) -> str:
    """`The X ...` -> `the X ...` after a cue; other starts (names) keep their case."""
    head, _, rest = text.partition(" ")
    return (head.lower() + " " + rest) if head in ("The", "A", "An") else text


def question_prompt(tokenizer, question: str) -> str:
    if uses_chat_template(tokenizer):
        return render_prompt(tokenizer, question, CHAT)
    return f"Question: {question}\nAnswer:"


def cloze_question(request: EditRequest) -> str:
    """A question made from the cloze prompt when the request has none."""
    return f"Complete the sentence: {request.text} ..."


def long_context(request: EditRequest, paragraphs: int = 2) -> str:
    text = "\n\n".join(_data_text("neutral_text.txt").strip().split("\n\n")[:paragraphs])
    return f"{text}\n\n{request.text}"


def few_shot(request: EditRequest, shots: Sequence[ProbeFact], count: int = 3) -> str | None:
    examples = [f for f in shots if request.subject.casefold() not in f.prompt.casefold()][:count]
    if not examples:
        return None
    return "\n".join(f"{f.prompt} {f.answer}." for f in examples) + f"\n{request.text}"


def indirect_prompts(tokenizer, request: EditRequest, shots: Sequence[ProbeFact]) -> list[IndirectPrompt]:
    questions = request.questions or [cloze_question(request)]
    out = [IndirectPrompt("question", question_prompt(tokenizer, q)) for q in questions]
    out += [IndirectPrompt("template", p) for p in request.held_out_prompts]
    out.append(IndirectPrompt("long_context", long_context(request)))
    shot = few_shot(request, shots)
    if shot:
        out.append(IndirectPrompt("few_shot", shot))
    out += [IndirectPrompt("cue", cue.format(text=lower_first(request.text))) for cue in CUES]
    return out


def access_report(models: dict[str, nn.Module], tokenizer, request: EditRequest, shots: Sequence[ProbeFact],
                  multiple_choice: dict, max_new_tokens: int = 12) -> dict:
    """Per model: which indirect prompts name the old (and the new) object, and the shares.
    multiple_choice: `choices.multiple_choice_report(...)`; measured, it adds a row per model."""
    prompts = indirect_prompts(tokenizer, request, shots)
    report: dict = {"status": MEASURED, "prompts": [{"kind": p.kind, "prompt": p.prompt} for p in prompts],
                    "multiple_choice": summary(multiple_choice), "models": {}}
    for name, model in models.items():
        texts = greedy_continuations(model, tokenizer, [p.prompt for p in prompts], max_new_tokens)
        rows = [{"kind": p.kind, "answer": t.strip(), "old": contains_object(t, request.old_object),
                 "new": contains_object(t, request.new_object)} for p, t in zip(prompts, texts, strict=True)]
        if multiple_choice["status"] == MEASURED:
            rows.append(_choice_row(multiple_choice["models"][name]))
        report["models"][name] = {"rows": rows}
    base_name = next(iter(models))
    reachable = [i for i, r in enumerate(report["models"][base_name]["rows"]) if r["old"]]
    report["reachable_before"] = len(reachable)
    for entry in report["models"].values():
        rows = entry["rows"]
        entry["old_share"] = sum(r["old"] for r in rows) / len(rows) if rows else 0.0
        entry["old_share_of_reachable"] = (sum(rows[i]["old"] for i in reachable) / len(reachable)) if reachable else None
        entry["old_kinds"] = sorted({r["kind"] for r in rows if r["old"]})
    return report


def _choice_row(scores: dict) -> dict:
    return {"kind": "multiple_choice", "answer": f"old first in {scores['old_first']:.2f} of rotations",
            "old": scores["old_first"] > 0.5, "new": scores["new_first"] > 0.5,
            "old_first": scores["old_first"], "new_first": scores["new_first"]}
