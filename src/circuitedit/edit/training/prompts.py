"""Training prompts for an edit: the prompt, user paraphrases, and the prompt after short
prefixes of text the model itself generates (as ROME does), so the edit holds in context."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...core.forward import input_device
from ...core.prompt_scan import PromptScan
from ...core.reference_cache import ModelReferences, tokenizer_identity
from ...core.tokens import pad_rows, padding_id, prompt_and_target_ids
from ...data.requests import EditRequest

PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You", "In", "It", "When")
PREFIX_LENGTH = 8  # new tokens sampled after each seed word
PREFIX_TOP_K = 5


@torch.no_grad()
def generated_prefixes(model, tokenizer, count: int, length: int = PREFIX_LENGTH, seed: int = 0) -> list[str]:
    """`count` short sampled texts from the model, seeded without touching the global RNG."""
    if count <= 0:
        return []
    seeds = [PREFIX_SEEDS[i % len(PREFIX_SEEDS)] for i in range(count)]
    device = input_device(model)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        ids = [tokenizer(s)["input_ids"] for s in seeds]
        pad = padding_id(tokenizer)
        input_ids, mask = pad_rows(ids, pad, side="left", device=device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=length,
                             do_sample=True, top_k=PREFIX_TOP_K, pad_token_id=pad)
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [" ".join(t.replace("\n", " ").split()).rstrip(".") + "." for t in texts]


def cached_prefixes(references: ModelReferences | None, model, tokenizer, count: int, seed: int = 0) -> list[str]:
    """`generated_prefixes`, read from `references` when this model's are stored there."""
    if references is None or count <= 0:
        return generated_prefixes(model, tokenizer, count, seed=seed)
    seeds = [PREFIX_SEEDS[i % len(PREFIX_SEEDS)] for i in range(count)]
    key = {"count": count, "seed": seed, "length": PREFIX_LENGTH, "top_k": PREFIX_TOP_K,
           "tokenizer": tokenizer_identity(tokenizer, seeds)}
    return list(references.get_or_compute("prefixes", key,
                                          lambda: generated_prefixes(model, tokenizer, count, seed=seed)))


def training_prompts(request: EditRequest, prefixes: list[str]) -> list[str]:
    base = request.training_prompts
    return base + [f"{prefix} {request.text}" for prefix in prefixes]


def training_contexts(request: EditRequest, prefixes: list[str]) -> list[str]:
    """Per prompt of `training_prompts`, its leading text that is context, not edit ("" for none)."""
    return [""] * len(request.training_prompts) + list(prefixes)


FUNCTION_WORDS = {"the", "a", "an", "of", "and", "de", "la", "le", "von", "van"}


def sibling_subjects(subject: str, pool: Sequence[str], limit: int = 32) -> list[str]:
    """Made-up subjects sharing the subject's leading or trailing words: "Ferrari Mondial" gives
    "Ferrari Tower", "Ferrari Lakers", ..., "Louvre Mondial", .... An edit keyed on the shared word
    ("Ferrari") instead of the whole subject flips these, and real siblings (Ferrari F40) with them."""
    words = subject.split()
    if len(words) < 2:
        return []
    multi = [p.split() for p in pool if len(p.split()) >= 2]
    heads = _distinct(w[0] for w in multi if w[0].casefold() not in FUNCTION_WORDS)
    tails = _distinct(w[-1] for w in multi if w[-1].casefold() not in FUNCTION_WORDS)
    lead, trail = " ".join(words[:-1]), " ".join(words[1:])
    siblings = [f"{lead} {t}" for t in tails if t.casefold() != words[-1].casefold()][:limit]
    siblings += [f"{h} {trail}" for h in heads if h.casefold() != words[0].casefold()][:limit]
    return siblings


def _distinct(items) -> list[str]:
    return list(dict.fromkeys(items))


def fill_without_double_article(request: EditRequest, subject: str) -> str:
    """The edit template filled with `subject`, dropping the subject's own "the" where the
    template already has one ("The {} is located in" + "the Alhambra")."""
    before = request.prompt.split("{}")[0]
    if before.casefold().endswith("the ") and subject.casefold().startswith("the "):
        subject = subject[4:]
    return request.fill(request.prompt, subject)


def template_scan_prompts(request: EditRequest, pool: Sequence[str]) -> list[str]:
    """The edit template filled with every pool subject, as the hard-negative scan fills it and
    as the localizer's search for a corrupting subject does (they differ for a "the" subject):
    what an edit's scans read on the unedited model, independent of the subject itself."""
    filled = [fill_without_double_article(request, s) for s in pool]
    return list(dict.fromkeys(filled + [request.prompt.replace("{}", s) for s in pool]))


def same_template_prompts(model, tokenizer, request: EditRequest, pool: list[str], count: int,
                          siblings: int = 0, scan: PromptScan | None = None) -> list[str]:
    """The edit template filled with other subjects, the neighbours an edit most easily drags along,
    so that the KL term holds their answers:

    - the `count` pool subjects for which the model gives the old object the highest probability
      (hard negatives: an edit that learned "old -> new" instead of "this subject -> new" flips them);
    - the `siblings` made-up siblings of the subject (shared first or last words) with the
      highest probability of the old object;
    - the `count // 2` others the model answers most confidently (same kind of entity).

    scan: the edit's PromptScan of the unedited model (the localizer's corrupting-subject search
    reads the same prompts); None makes one."""
    if count <= 0:
        return []
    # Subjects of the request's neighbourhood probes are measured, never trained on.
    measured = [n["prompt"].casefold() for n in request.neighbourhood]

    def usable(s: str) -> bool:
        return s.casefold() != request.subject.casefold() and not any(s.casefold() in p for p in measured)

    others = [s for s in pool if usable(s)]
    made_up = [s for s in sibling_subjects(request.subject, pool) if usable(s)] if siblings > 0 else []
    prompts = [fill_without_double_article(request, s) for s in others + made_up]
    old_token = prompt_and_target_ids(tokenizer, request.text, request.old_object)[1][0]
    stats = (scan or PromptScan(model, tokenizer)).stats(prompts, old_token)
    old_prob, top_prob = stats.watched_prob(), stats.top_prob()
    hard = old_prob[: len(others)].argsort(descending=True)[:count].tolist()
    close = (len(others) + old_prob[len(others):].argsort(descending=True)[:siblings]).tolist()
    confident = [i for i in top_prob[: len(others)].argsort(descending=True).tolist() if i not in hard]
    return [prompts[i] for i in hard + close + confident[: count // 2]]
