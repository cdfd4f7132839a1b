"""The shared corruption setup: corrupted subjects, noised embeddings, fact prompts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..core.forward import hidden_states, input_device, logits_from_hidden
from ..core.prompt_scan import PromptScan
from ..core.tokens import encode_text, prompt_and_target_ids
from ..data.requests import EditRequest
from ..models.components import HEAD, MLP, Component
from ..models.hooks import Site
from .base import LocalizeConfig


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
class PatchingSetup:
    """A clean prompt, its corrupted twin and the metric logit(answer) - logit(corrupt answer)."""

    clean_ids: torch.Tensor  # (1, T)
    corrupt_ids: torch.Tensor  # (1, T); equal to clean_ids when the corruption is noise
    noise: torch.Tensor | None  # (len(subject_positions), H) or None
    subject_positions: list[int]
    last_position: int
    answer_token: int
    corrupt_token: int
    corruption: str

    @property
    def groups(self) -> dict[str, list[int]]:
        return {"subject": self.subject_positions, "last": [self.last_position]}

    def metric(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """(B,) metric from final hidden states (B, T, H)."""
        logits = logits_from_hidden(model, hidden[:, self.last_position])
        return logits[:, self.answer_token] - logits[:, self.corrupt_token]

    def run(self, model: nn.Module, ids: torch.Tensor, corrupted: bool = False) -> torch.Tensor:
        mask = torch.ones_like(ids)
        if corrupted and self.noise is not None:
            with subject_noise(model, self.subject_positions, self.noise):
                return self.metric(model, hidden_states(model, ids, mask))
        return self.metric(model, hidden_states(model, ids, mask))


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
    device = input_device(model)
    ids, subj_pos = subject_token_positions(tokenizer, template, request.subject)
    answer = prompt_and_target_ids(tokenizer, template.replace("{}", request.subject), request.old_object)[1][0]
    clean = torch.tensor([ids], device=device)
    last = len(ids) - 1
    candidates = []
    for other in subject_pool:
        if other.casefold() == request.subject.casefold():
            continue
        try:
            other_ids, other_pos = subject_token_positions(tokenizer, template, other)
        except LocalizationError:
            continue
        if len(other_ids) == len(ids) and other_pos == subj_pos:
            candidates.append((other, other_ids))
    if candidates:
        stats = (scan or PromptScan(model, tokenizer)).stats([template.replace("{}", c[0]) for c in candidates], answer)
        margin = stats.watched_logit - stats.top_logit  # <= 0; most negative = most different
        for idx in torch.argsort(margin).tolist():
            if int(stats.top_token[idx]) != answer:
                corrupt = torch.tensor([candidates[idx][1]], device=device)
                return PatchingSetup(clean, corrupt, None, subj_pos, last, answer,
                                     int(stats.top_token[idx]), f"subject swap: {candidates[idx][0]!r}")
    # Fallback: ROME-style Gaussian noise on the subject embeddings.
    emb = model.get_input_embeddings()
    std = emb.weight.float().std().item()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(subj_pos), emb.weight.shape[1]), generator=gen) * noise_scale * std
    noise = noise.to(device)
    with subject_noise(model, subj_pos, noise):
        logits = logits_from_hidden(model, hidden_states(model, clean, torch.ones_like(clean))[:, last])
    ranked = logits[0].argsort(descending=True).tolist()
    corrupt_token = ranked[0] if ranked[0] != answer else ranked[1]
    return PatchingSetup(clean, clean, noise, subj_pos, last, answer, int(corrupt_token),
                         f"subject noise x{noise_scale} std")


def site_width_split(comp_site: Site, act: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reshape a site's activation (..., D) into per-component parts (..., C, D/C)."""
    if comp_site[1] == HEAD:
        return act.reshape(*act.shape[:-1], num_heads, act.shape[-1] // num_heads)
    return act.unsqueeze(-2)


def site_components(site: Site, num_heads: int) -> list[Component]:
    layer, kind = site
    if kind == HEAD:
        return [Component(layer, HEAD, h) for h in range(num_heads)]
    return [Component(layer, MLP)]


@dataclass
class FactPrompt:
    """One phrasing of the fact, ready to run: ids, subject positions, answer and (optional) noise."""

    template: str
    ids: torch.Tensor  # (1, T)
    subject_positions: list[int]
    last_position: int
    answer_token: int
    noise: torch.Tensor | None  # (len(subject_positions), H)

    @property
    def groups(self) -> dict[str, list[int]]:
        return {"subject": self.subject_positions, "last": [self.last_position]}


def embedding_noise(model: nn.Module, n_tokens: int, scale: float, seed: int) -> torch.Tensor:
    """Gaussian noise of `scale` x the embedding matrix's std, seeded, on the model's device."""
    emb = model.get_input_embeddings()
    std = emb.weight.float().std().item()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n_tokens, emb.weight.shape[1]), generator=gen) * scale * std
    return noise.to(input_device(model))


def fact_prompts(model, tokenizer, request, config: LocalizeConfig, noise: bool = True) -> list[FactPrompt]:
    """The edit prompt and (config.use_paraphrases) its paraphrases, without any forward pass."""
    templates = [request.prompt] + (list(request.paraphrases) if config.use_paraphrases else [])
    device = input_device(model)
    prompts: list[FactPrompt] = []
    for index, template in enumerate(templates):
        try:
            ids, subj = subject_token_positions(tokenizer, template, request.subject)
        except LocalizationError:
            if template == request.prompt:
                raise
            continue
        answer = prompt_and_target_ids(tokenizer, template.replace("{}", request.subject), request.old_object)[1][0]
        prompts.append(FactPrompt(
            template, torch.tensor([ids], device=device), subj, len(ids) - 1, int(answer),
            embedding_noise(model, len(subj), config.noise_scale, config.seed + index) if noise else None,
        ))
    return prompts
