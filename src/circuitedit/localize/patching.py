"""One generic patching routine shared by every localizer.

A *site* is where a component's activation lives: the input of a layer's attention output
projection (heads, (B, T, n_heads * head_dim)) or the output of its MLP down projection
((B, T, hidden)). `site_hooks` lets a caller read or replace the activation at every site;
capture, gradient attribution and exact patching are all built on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..evaluate.prompt_scan import PromptScan
from ..evaluate.scoring import (
    encode_text,
    hidden_states,
    input_device,
    logits_from_hidden,
    prompt_and_target_ids,
)
from ..models.arch import ArchitectureAdapter
from ..models.components import HEAD, MLP, Component
from ..requests import EditRequest

Site = tuple[int, str]  # (layer, HEAD | MLP)
SiteFn = Callable[[Site, torch.Tensor], torch.Tensor | None]


class LocalizationError(ValueError):
    pass


@contextmanager
def site_hooks(model: nn.Module, adapter: ArchitectureAdapter, fn: SiteFn) -> Iterator[None]:
    """Call `fn(site, activation)` at every site; a returned tensor replaces the activation."""
    handles = []

    def pre_hook(layer):
        def hook(_module, args):
            new = fn((layer, HEAD), args[0])
            return None if new is None else (new, *args[1:])
        return hook

    def post_hook(layer):
        def hook(_module, _args, output):
            return fn((layer, MLP), output)
        return hook

    try:
        for layer in range(adapter.num_layers(model)):
            handles.append(model.get_submodule(adapter.attn_out_name(layer)).register_forward_pre_hook(pre_hook(layer)))
            handles.append(model.get_submodule(adapter.mlp_out_name(layer)).register_forward_hook(post_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def row_patcher(rows_by_site: dict, source: dict) -> SiteFn:
    """A SiteFn that writes `source[site][0, positions, dims]` into the listed batch rows.

    rows_by_site: {site: [(row, positions, dims), ...]}; source: {site: (1, T, D) activation}.
    """

    def patch(site, act):
        if site not in rows_by_site:
            return None
        act = act.clone()
        for row, positions, dims in rows_by_site[site]:
            act[row, positions, dims] = source[site][0, positions, dims]
        return act

    return patch


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
