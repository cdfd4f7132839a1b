"""The facts an audit works with: other facts of the edited relation, never the edited one."""

from __future__ import annotations

from collections.abc import Sequence

from ..core.generate import greedy_continuations
from ..core.matching import contains_object
from ..data.facts import Fact, control_facts, subject_pool
from ..data.requests import EditRequest
from .latent import ProbeFact


def template_subject(template: str, prompt: str) -> str | None:
    """The subject of `prompt` if it is `template` (a `{}` template) filled with one, else None."""
    prefix, _, suffix = template.partition("{}")
    if len(prompt) <= len(prefix) + len(suffix) or not prompt.startswith(prefix) or not prompt.endswith(suffix):
        return None
    subject = prompt[len(prefix): len(prompt) - len(suffix)].strip()
    return subject or None


def mentions_edit(request: EditRequest, text: str) -> bool:
    """Whether `text` is about the edited fact: it names the subject or is one of its prompts."""
    own = {request.text, *request.training_prompts, *request.held_out_prompts}
    return request.subject.casefold() in text.casefold() or text in own


def same_relation_facts(request: EditRequest, facts: Sequence[Fact] | None = None) -> list[ProbeFact]:
    """Facts in the edit's own template (built-in control facts and the request's neighbourhood),
    each with its subject, minus anything about the edited subject; one per subject."""
    facts = control_facts() if facts is None else list(facts)
    items = [(f.prompt, f.answer) for f in facts] + [(n["prompt"], n["answer"]) for n in request.neighbourhood]
    out: dict[str, ProbeFact] = {}
    for prompt, answer in items:
        subject = template_subject(request.prompt, prompt)
        if subject is None or mentions_edit(request, prompt) or subject.casefold() in out:
            continue
        out[subject.casefold()] = ProbeFact(prompt, subject, answer)
    return list(out.values())


def known_facts(model, tokenizer, facts: Sequence[ProbeFact], max_new_tokens: int = 8) -> list[ProbeFact]:
    """The facts whose answer the model's greedy continuation names."""
    if not facts:
        return []
    texts = greedy_continuations(model, tokenizer, [f.prompt for f in facts], max_new_tokens)
    return [f for f, t in zip(facts, texts, strict=True) if contains_object(t, f.answer)]


def pool_facts(model, tokenizer, request: EditRequest, objects: Sequence[str], max_new_tokens: int = 6,
               pool: Sequence[str] | None = None) -> list[ProbeFact]:
    """Subject-pool entities in the edit template whose greedy answer is one of `objects`: more
    facts of the relation, labelled by what the model itself believes."""
    pool = subject_pool() if pool is None else pool
    subjects = [s for s in pool if s.casefold() != request.subject.casefold()]
    if not subjects or not objects:
        return []
    prompts = [request.fill(request.prompt, s) for s in subjects]
    texts = greedy_continuations(model, tokenizer, prompts, max_new_tokens)
    out = []
    for subject, prompt, text in zip(subjects, prompts, texts, strict=True):
        first = text.strip().split("\n")[0]
        hits = [o for o in objects if contains_object(first[: len(o) + 12], o)]
        if len(hits) == 1 and not mentions_edit(request, prompt):
            out.append(ProbeFact(prompt, subject, hits[0]))
    return out
