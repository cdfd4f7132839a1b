"""The shared corruption setup: which prompts a localizer scores (the edit prompt and, optionally,
its paraphrases), the subject's positions and the answer in each, and how the subject is
corrupted (another subject swapped in, or noise on its embeddings)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from ..core.forward import hidden_states, input_device, logits_from_hidden
from ..core.prompt_scan import PromptScan
from ..core.tokens import encode_text, prompt_and_target_ids
from ..data.facts import subject_pool
from ..data.requests import EditRequest
from .base import LocalizeConfig

T = TypeVar("T")


class LocalizationError(ValueError):
    pass


@contextmanager
def subject_noise(model: nn.Module, positions: Sequence[int], noise: torch.Tensor | None) -> Iterator[None]:
    """Add `noise` (len(positions), H) to the input embeddings at the subject positions."""
    if noise is None:
        yield
        return

    def hook(_module, _args, output):
        output = output.clone()
        output[:, list(positions)] += noise.to(output.dtype)
        return output

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def embedding_noise(model: nn.Module, n_tokens: int, scale: float, seed: int) -> torch.Tensor:
    """Gaussian noise of `scale` x the embedding matrix's std, seeded, on the model's device."""
    emb = model.get_input_embeddings()
    std = emb.weight.float().std().item()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n_tokens, emb.weight.shape[1]), generator=gen) * scale * std
    return noise.to(input_device(model))


def subject_token_positions(tokenizer, template: str, subject: str) -> tuple[list[int], list[int]]:
    """Token ids of the filled prompt and the positions of the subject's tokens."""
    prefix = template.split("{}")[0]
    text = template.replace("{}", subject)
    ids = encode_text(tokenizer, text)
    start = len(encode_text(tokenizer, prefix.rstrip())) if prefix.strip() else len(encode_text(tokenizer, ""))
    end = len(encode_text(tokenizer, (prefix + subject)))
    if end <= start:
        raise LocalizationError(f"subject {subject!r} has no tokens of its own in {text!r}")
    return ids, list(range(start, min(end, len(ids))))


@dataclass
class FactPrompt:
    """One phrasing of the fact, ready to run: ids, subject positions, answer and (optional) noise."""

    template: str
    ids: torch.Tensor  # (1, T)
    subject_positions: list[int]
    last_position: int
    answer_token: int
    noise: torch.Tensor | None = None  # (len(subject_positions), H)

    @property
    def groups(self) -> dict[str, list[int]]:
        return {"subject": self.subject_positions, "last": [self.last_position]}

    def noised(self, model: nn.Module, on: bool = True):
        """A context in which `model`'s subject embeddings carry this prompt's noise (if `on` and
        it has any)."""
        return subject_noise(model, self.subject_positions, self.noise if on else None)


def fact_prompt(model: nn.Module, tokenizer, template: str, request: EditRequest) -> FactPrompt:
    """`template` filled with the request's subject, without noise and without any forward pass."""
    ids, subject = subject_token_positions(tokenizer, template, request.subject)
    answer = prompt_and_target_ids(tokenizer, template.replace("{}", request.subject), request.old_object)[1][0]
    return FactPrompt(template, torch.tensor([ids], device=input_device(model)), subject, len(ids) - 1, int(answer))


def per_template(request: EditRequest, config: LocalizeConfig, build: Callable[[int, str], T]) -> list[T]:
    """build(index, template) for the edit prompt and (config.use_paraphrases) its paraphrases; a
    paraphrase the subject has no tokens of its own in is left out, the edit prompt raises."""
    templates = [request.prompt] + (list(request.paraphrases) if config.use_paraphrases else [])
    built = []
    for index, template in enumerate(templates):
        try:
            built.append(build(index, template))
        except LocalizationError:
            if template == request.prompt:
                raise
    return built


def fact_prompts(model, tokenizer, request, config: LocalizeConfig, noise: bool = True) -> list[FactPrompt]:
    """The edit prompt and (config.use_paraphrases) its paraphrases, without any forward pass;
    noise: each with its own seeded subject noise (seed config.seed + the template's index)."""
    def build(index: int, template: str) -> FactPrompt:
        prompt = fact_prompt(model, tokenizer, template, request)
        if noise:
            prompt.noise = embedding_noise(model, len(prompt.subject_positions), config.noise_scale, config.seed + index)
        return prompt

    return per_template(request, config, build)


@dataclass(kw_only=True)
class PatchingSetup(FactPrompt):
    """A clean prompt, its corrupted twin and the metric logit(answer) - logit(corrupt answer)."""

    corrupt_ids: torch.Tensor  # (1, T); equal to the clean ids when the corruption is noise
    corrupt_token: int
    corruption: str

    @property
    def clean_ids(self) -> torch.Tensor:  # (1, T)
        return self.ids

    def metric(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """(B,) metric from final hidden states (B, T, H)."""
        logits = logits_from_hidden(model, hidden[:, self.last_position])
        return logits[:, self.answer_token] - logits[:, self.corrupt_token]

    def run(self, model: nn.Module, ids: torch.Tensor, corrupted: bool = False) -> torch.Tensor:
        with self.noised(model, corrupted):
            return self.metric(model, hidden_states(model, ids, torch.ones_like(ids)))


@torch.no_grad()
def prepare_setup(
    model: nn.Module,
    tokenizer,
    template: str,
    request: EditRequest,
    subject_pool: Sequence[str],
    noise_scale: float = 3.0,
    seed: int = 0,
    scan: PromptScan | None = None,
) -> PatchingSetup:
    """Corrupt by another subject of the same token length whose answer differs; noise otherwise.

    scan: the edit's PromptScan of this model (the hard-negative scan reads the same prompts);
    None makes one."""
    prompt = fact_prompt(model, tokenizer, template, request)
    clean, subj_pos, answer = prompt.ids, prompt.subject_positions, prompt.answer_token
    candidates = []
    for other in subject_pool:
        if other.casefold() == request.subject.casefold():
            continue
        try:
            other_ids, other_pos = subject_token_positions(tokenizer, template, other)
        except LocalizationError:
            continue
        if len(other_ids) == clean.shape[1] and other_pos == subj_pos:
            candidates.append((other, other_ids))
    if candidates:
        stats = (scan or PromptScan(model, tokenizer)).stats([template.replace("{}", c[0]) for c in candidates], answer)
        margin = stats.watched_logit - stats.top_logit  # <= 0; most negative = most different
        for idx in torch.argsort(margin).tolist():
            if int(stats.top_token[idx]) != answer:
                corrupt = torch.tensor([candidates[idx][1]], device=clean.device)
                return PatchingSetup(**vars(prompt), corrupt_ids=corrupt, corrupt_token=int(stats.top_token[idx]),
                                     corruption=f"subject swap: {candidates[idx][0]!r}")
    # Fallback: ROME-style Gaussian noise on the subject embeddings.
    prompt.noise = embedding_noise(model, len(subj_pos), noise_scale, seed)
    with prompt.noised(model):
        logits = logits_from_hidden(model, hidden_states(model, clean, torch.ones_like(clean))[:, prompt.last_position])
    ranked = logits[0].argsort(descending=True).tolist()
    corrupt_token = ranked[0] if ranked[0] != answer else ranked[1]
    return PatchingSetup(**vars(prompt), corrupt_ids=clean, corrupt_token=int(corrupt_token),
                         corruption=f"subject noise x{noise_scale} std")


def localization_setups(model, tokenizer, request, config: LocalizeConfig,
                        scan: PromptScan | None = None) -> list[PatchingSetup]:
    """A PatchingSetup for the edit prompt and (config.use_paraphrases) each paraphrase, the
    corrupting subjects searched in the package's subject pool."""
    pool = subject_pool()
    return per_template(request, config, lambda _index, template: prepare_setup(
        model, tokenizer, template, request, pool, config.noise_scale, config.seed, scan=scan))
