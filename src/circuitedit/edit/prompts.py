"""Training prompts for an edit: the prompt, user paraphrases, and the prompt after short
prefixes of text the model itself generates (as ROME does), so the edit holds in context."""

from __future__ import annotations

import torch

from ..evaluate.scoring import input_device, last_token_logits
from ..requests import EditRequest

PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You", "In", "It", "When")


@torch.no_grad()
def generated_prefixes(model, tokenizer, count: int, length: int = 8, seed: int = 0) -> list[str]:
    """`count` short sampled texts from the model, seeded without touching the global RNG."""
    if count <= 0:
        return []
    seeds = [PREFIX_SEEDS[i % len(PREFIX_SEEDS)] for i in range(count)]
    device = input_device(model)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        ids = [tokenizer(s)["input_ids"] for s in seeds]
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id or 0
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=length,
                             do_sample=True, top_k=5, pad_token_id=pad)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [" ".join(t.replace("\n", " ").split()).rstrip(".") + "." for t in texts]


def training_prompts(request: EditRequest, prefixes: list[str]) -> list[str]:
    base = request.training_prompts
    return base + [f"{prefix} {request.text}" for prefix in prefixes]


@torch.no_grad()
def same_template_prompts(model, tokenizer, request: EditRequest, pool: list[str], count: int) -> list[str]:
    """The edit template filled with the `count` other subjects the model answers it for most
    confidently (the same kind of entity, e.g. other landmarks for a landmark's city): the
    neighbours an edit most easily drags along, so their answers are held by the KL term."""
    if count <= 0:
        return []
    others = [s for s in pool if s.casefold() != request.subject.casefold()]
    prompts = [request.fill(request.prompt, s) for s in others]
    confidence = last_token_logits(model, tokenizer, prompts).softmax(-1).max(-1).values
    order = confidence.argsort(descending=True)[:count].tolist()
    return [prompts[i] for i in order]
