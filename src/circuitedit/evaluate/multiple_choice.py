"""The fact as a multiple-choice question: old vs new object vs distractors, answered by letter.

Does the edit hold in a format it was not trained on (the new object's letter ranks first), and
is the old fact gone there too (the old object's letter no longer does)? Every cyclic rotation of
the options is asked, so a model's preference for one letter cannot pass for knowledge.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.forward import last_token_logits
from ..core.tokens import TargetTokenizationError, prompt_and_target_ids, uses_chat_template
from ..data.requests import EditRequest

LETTERS = "ABCDEFGH"
QUESTION = "Question: Which option correctly completes the sentence \"{prompt} ...\"?\n{options}\nAnswer:"


@dataclass
class ChoiceSet:
    """The options of one fact (old and new object first) and the prompts of each rotation."""

    options: list[str]
    prompts: list[str]
    orders: list[list[int]]  # per rotation: option index shown at each letter


def distractors_for(request: EditRequest, pool: Sequence[EditRequest], count: int = 2, seed: int = 0) -> list[str]:
    """Other objects from the data set, same relation first (seeded), never the old or new one."""
    taken = {request.old_object.casefold(), request.new_object.casefold()}
    same, other = [], []
    for r in pool:
        for obj in (r.old_object, r.new_object):
            if obj.casefold() in taken:
                continue
            taken.add(obj.casefold())
            (same if r.relation == request.relation else other).append(obj)
    rng = random.Random(f"{seed}:{request.subject}:{request.prompt}")
    rng.shuffle(same)
    rng.shuffle(other)
    return (same + other)[:count]


def choice_set(tokenizer, request: EditRequest, distractors: Sequence[str]) -> ChoiceSet:
    options = [request.old_object, request.new_object, *distractors]
    n = len(options)
    prompts, orders = [], []
    for shift in range(n):
        order = [(i + shift) % n for i in range(n)]
        lines = "\n".join(f"{LETTERS[k]}. {options[i]}" for k, i in enumerate(order))
        text = QUESTION.format(prompt=request.text, options=lines)
        if uses_chat_template(tokenizer):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text + " (reply with the letter)"}],
                                                 tokenize=False, add_generation_prompt=True)
        prompts.append(text)
        orders.append(order)
    return ChoiceSet(options, prompts, orders)


def letter_tokens(tokenizer, prompt: str, count: int) -> list[int]:
    return [prompt_and_target_ids(tokenizer, prompt, LETTERS[k])[1][0] for k in range(count)]


@torch.no_grad()
def multiple_choice_scores(model, tokenizer, choices: ChoiceSet) -> dict | None:
    """Fractions of rotations in which the old / new object's letter ranks first (None when the
    tokenizer cannot write the letters)."""
    n = len(choices.options)
    try:
        letters = letter_tokens(tokenizer, choices.prompts[0], n)
    except TargetTokenizationError:
        return None
    logits = last_token_logits(model, tokenizer, choices.prompts)[:, letters]  # (rotations, n)
    picked = [order[int(row.argmax())] for row, order in zip(logits, choices.orders, strict=True)]
    rotations = len(choices.orders)
    return {
        "old_first": sum(p == 0 for p in picked) / rotations,
        "new_first": sum(p == 1 for p in picked) / rotations,
        "options": n,
    }
