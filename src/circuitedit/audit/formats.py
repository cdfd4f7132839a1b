"""Format robustness: the new fact and the forgetting in formats the edit may not have seen.

cloze: the edit prompt itself. question: the request's questions (chat template for chat
models, `Question: ... Answer:` otherwise). multiple_choice: the old, the new object and
distractors, every rotation asked (new_first / old_first shares). subject variants: lower case,
upper case, the whole prompt in lower case, a trailing colon, the subject in quotes.
"""

from __future__ import annotations

from torch import nn

from ..core.generate import greedy_continuations
from ..core.matching import contains_object
from ..data.requests import EditRequest
from .access import cloze_question, question_prompt
from .choices import summary
from .status import MEASURED


def subject_variants(request: EditRequest) -> dict[str, str]:
    """Capitalization / punctuation variants of the edit prompt (distinct from it)."""
    subject, text = request.subject, request.text
    variants = {
        "subject_lower": request.fill(request.prompt, subject.lower()),
        "subject_upper": request.fill(request.prompt, subject.upper()),
        "prompt_lower": text.lower(),
        "trailing_colon": text.rstrip() + ":",
        "subject_quoted": request.fill(request.prompt, f'"{subject}"'),
    }
    return {k: v for k, v in variants.items() if v != text}


def format_prompts(tokenizer, request: EditRequest) -> dict[str, list[str]]:
    questions = request.questions or [cloze_question(request)]
    out = {"cloze": [request.text], "question": [question_prompt(tokenizer, q) for q in questions]}
    out.update({k: [v] for k, v in subject_variants(request).items()})
    return out


def formats_report(models: dict[str, nn.Module], tokenizer, request: EditRequest, multiple_choice: dict,
                   max_new_tokens: int = 12) -> dict:
    """Per model and format: new-object accuracy and forget rate (old object not named).
    multiple_choice: `choices.multiple_choice_report(...)`; measured, it is one more format."""
    prompts = format_prompts(tokenizer, request)
    flat = [(fmt, p) for fmt, ps in prompts.items() for p in ps]
    report: dict = {"status": MEASURED, "prompts": {k: v for k, v in prompts.items()},
                    "multiple_choice": summary(multiple_choice), "models": {}}
    for name, model in models.items():
        texts = greedy_continuations(model, tokenizer, [p for _, p in flat], max_new_tokens)
        entry: dict = {}
        for fmt in prompts:
            answers = [t for (f, _), t in zip(flat, texts, strict=True) if f == fmt]
            entry[fmt] = {
                "new_accuracy": sum(contains_object(t, request.new_object) for t in answers) / len(answers),
                "forget_rate": sum(not contains_object(t, request.old_object) for t in answers) / len(answers),
                "answers": [t.strip() for t in answers],
            }
        if multiple_choice["status"] == MEASURED:
            scores = multiple_choice["models"][name]
            entry["multiple_choice"] = {"new_accuracy": scores["new_first"], "forget_rate": 1 - scores["old_first"],
                                        "options": multiple_choice["options"]}
        report["models"][name] = entry
    return report
