"""Fluency of an (edited) model: n-gram entropy of its generations (ROME's measure: weighted
2- and 3-gram entropy, in bits) and perplexity on a fixed neutral text shipped with the package."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch

from ..core.forward import hidden_states, input_device, logits_from_hidden
from ..core.generate import greedy_continuations
from ..core.tokens import encode_text
from ..data.facts import _data_text
from ..data.requests import EditRequest

GENERATION_TOKENS = 40


def neutral_text() -> str:
    return _data_text("neutral_text.txt")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the n-gram entropies (bits) of one text's words (0.0 for no n-grams)."""
    words = re.findall(r"\w+|[^\w\s]", text.casefold())
    values = []
    for n, weight in zip(ns, weights, strict=True):
        counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        values.append(weight * entropy)
    return sum(values) / len(values)


def generation_prompts(request: EditRequest) -> list[str]:
    """Prompts about the edited subject: the edit prompt, its held-out paraphrases, and an open one."""
    prompts = [request.text, *request.held_out_prompts[:2], f"{request.subject} is"]
    return list(dict.fromkeys(prompts))


def generation_entropy(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = GENERATION_TOKENS) -> tuple[float, list[str]]:
    """(mean n-gram entropy of the greedy generations, the generations)."""
    texts = greedy_continuations(model, tokenizer, list(prompts), max_new_tokens)
    return sum(ngram_entropy(t) for t in texts) / len(texts), texts


@torch.no_grad()
def perplexity(model, tokenizer, text: str | None = None, max_tokens: int = 512, chunk: int = 128) -> float:
    """exp(mean next-token NLL) over `text` (default: the shipped neutral text), one sequence."""
    ids = encode_text(tokenizer, neutral_text() if text is None else text)[:max_tokens]
    input_ids = torch.tensor([ids], device=input_device(model))
    hidden = hidden_states(model, input_ids, torch.ones_like(input_ids))[0, :-1]
    targets = input_ids[0, 1:]
    nll = 0.0
    for start in range(0, len(targets), chunk):  # the LM head over a chunk at a time
        logits = logits_from_hidden(model, hidden[start:start + chunk])
        nll += float(torch.nn.functional.cross_entropy(logits, targets[start:start + chunk].to(logits.device), reduction="sum"))
    return math.exp(nll / max(len(targets), 1))
