"""Relearning attack (after Guo et al., 2024): fine-tune the edited model for a small fixed budget
and measure how much of the old fact comes back.

other_facts: other facts of the same relation (prompt -> answer), never the edited fact: no
  training text names the edited subject or is one of its prompts (checked, `LeakError`).
subject_sentences: the edited subject in unrelated sentences (language-modelling loss), none of
  which names the old object (checked).
Both variants train every non-embedding weight with Adam for `steps` steps on a copy; the model
passed in is not modified. Forgetting is measured on the edit prompt and its held-out paraphrases.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from torch import nn

from ..core.forward import input_device, object_logprobs, selected_logits
from ..core.generate import greedy_continuations
from ..core.matching import contains_object
from ..core.tokens import TargetTokenizationError, build_batch, prompt_and_target_ids
from ..data.requests import EditRequest
from .data import mentions_edit
from .latent import ProbeFact
from .status import MEASURED, measured, skipped

SUBJECT_SENTENCES = (
    "Many people took photos of {} last summer.",
    "A new documentary about {} was released this year.",
    "{} was mentioned several times in the newspaper.",
    "My friend wrote a long essay about {}.",
    "Everyone at the party was talking about {}.",
    "The children drew pictures of {} in class.",
)


class LeakError(ValueError):
    """A relearning training set contains the fact it is meant to be kept away from."""


def other_fact_examples(request: EditRequest, facts: Sequence[ProbeFact]) -> list[tuple[str, str]]:
    """(prompt, answer) pairs for the other-facts attack; raises if the edited fact leaks in."""
    examples = [(f.prompt, f.answer) for f in facts if not mentions_edit(request, f.prompt)]
    check_no_leak(request, examples)
    return examples


def check_no_leak(request: EditRequest, examples: Sequence[tuple[str, str]]) -> None:
    for prompt, _answer in examples:
        if mentions_edit(request, prompt):
            raise LeakError(f"relearning set contains the edited fact: {prompt!r}")


def subject_examples(request: EditRequest, tokenizer=None,
                     templates: Sequence[str] = SUBJECT_SENTENCES) -> list[tuple[str, str]]:
    """("", sentence) pairs: the whole sentence is the target; none names the old object.
    With a tokenizer, sentences it cannot express (unknown tokens) are left out. None at all when
    the subject itself names the old object ("The Icelandic Dream": Icelandic): no sentence
    about it can keep the old fact out, so that attack is not run."""
    if contains_object(request.subject, request.old_object):
        return []
    out = [("", t.format(request.subject)) for t in templates]
    if tokenizer is not None:
        out = [e for e in out if _expressible(tokenizer, e[1])]
    for _, sentence in out:
        if contains_object(sentence, request.old_object):
            raise LeakError(f"subject sentence names the old object: {sentence!r}")
    return out


def _expressible(tokenizer, text: str) -> bool:
    try:
        prompt_and_target_ids(tokenizer, "", text)
    except TargetTokenizationError:
        return False
    return True


def forget_measure(model: nn.Module, tokenizer, request: EditRequest, max_new_tokens: int = 10) -> dict:
    prompts = [request.text, *request.held_out_prompts]
    texts = greedy_continuations(model, tokenizer, prompts, max_new_tokens)
    old_lp = object_logprobs(model, tokenizer, prompts, [request.old_object] * len(prompts))
    new_lp = object_logprobs(model, tokenizer, prompts, [request.new_object] * len(prompts))
    return {"forget_rate": sum(not contains_object(t, request.old_object) for t in texts) / len(texts),
            "new_accuracy": sum(contains_object(t, request.new_object) for t in texts) / len(texts),
            "old_logprob": float(old_lp.mean()), "new_logprob": float(new_lp.mean())}


def finetune(model: nn.Module, tokenizer, examples: Sequence[tuple[str, str]], steps: int, lr: float) -> nn.Module:
    """A copy of `model` after `steps` full-batch Adam steps on the examples' target tokens."""
    tuned = copy.deepcopy(model)
    embeddings = {id(p) for p in tuned.get_input_embeddings().parameters()}
    embeddings |= {id(p) for p in tuned.get_output_embeddings().parameters()}
    params = [p for p in tuned.parameters() if id(p) not in embeddings]
    for p in tuned.parameters():
        p.requires_grad_(id(p) not in embeddings)
    optimizer = torch.optim.Adam(params, lr=lr)
    batch = build_batch(tokenizer, [e[0] for e in examples], [e[1] for e in examples], input_device(tuned))
    tuned.train(False)
    with torch.enable_grad():
        for _ in range(steps):
            logits = selected_logits(tuned, batch)
            loss = nn.functional.cross_entropy(logits, batch.targets.to(logits.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned


def relearn_report(model: nn.Module, tokenizer, request: EditRequest, facts: Sequence[ProbeFact],
                   steps: int = 10, lr: float = 3e-5, before: dict | None = None) -> dict:
    """Forgetting of the edited model before and after each attack; an attack with no training
    text is skipped with the reason."""
    before = before or forget_measure(model, tokenizer, request)
    report: dict = {"status": MEASURED, "steps": steps, "lr": lr, "before": before, "attacks": {}}
    for name, examples in (("other_facts", other_fact_examples(request, facts)),
                           ("subject_sentences", subject_examples(request, tokenizer))):
        if not examples:
            report["attacks"][name] = skipped(_no_examples(name, request))
            continue
        tick = time.perf_counter()
        tuned = finetune(model, tokenizer, examples, steps, lr)
        after = forget_measure(tuned, tokenizer, request)
        del tuned
        report["attacks"][name] = measured(
            train_examples=len(examples),
            train_prompts=[p or s for p, s in examples],
            after=after,
            old_returned=after["forget_rate"] < before["forget_rate"],
            old_logprob_gain=after["old_logprob"] - before["old_logprob"],
            seconds=round(time.perf_counter() - tick, 2),
        )
    return report


def _no_examples(attack: str, request: EditRequest) -> str:
    if attack == "other_facts":
        return "no other facts of the relation to train on"
    if contains_object(request.subject, request.old_object):
        return "the subject names the old object, so no sentence about it can leave the old fact out"
    return "the tokenizer cannot write any of the subject sentences"
