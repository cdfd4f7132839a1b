"""Training prompts for an edit: the prompt, user paraphrases, and the prompt after short
prefixes of text the model itself generates (as ROME does), so the edit holds in context."""

from __future__ import annotations

import torch

from ..evaluate.scoring import input_device, last_token_logits, prompt_and_target_ids
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
    """The edit template filled with other subjects, the neighbours an edit most easily drags along,
    so that the KL term holds their answers:

    - the `count` pool subjects for which the model gives the old object the highest probability
      (hard negatives: an edit that learned "old -> new" instead of "this subject -> new" flips them);
    - the `count // 2` others the model answers most confidently (same kind of entity)."""
    if count <= 0:
        return []
    # Subjects of the request's neighbourhood probes are measured, never trained on.
    measured = [n["prompt"].casefold() for n in request.neighbourhood]
    others = [s for s in pool if s.casefold() != request.subject.casefold()
              and not any(s.casefold() in prompt for prompt in measured)]
    prompts = [request.fill(request.prompt, s) for s in others]
    probs = last_token_logits(model, tokenizer, prompts, batch_size=64).float().softmax(-1)  # (P, V)
    old_token = prompt_and_target_ids(tokenizer, request.text, request.old_object)[1][0]
    hard = probs[:, old_token].argsort(descending=True)[:count].tolist()
    confident = [i for i in probs.max(-1).values.argsort(descending=True).tolist() if i not in hard]
    return [prompts[i] for i in hard + confident[: count // 2]]
