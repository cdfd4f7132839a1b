"""Causal tracing (Meng et al. 2022, ROME): corrupt the subject with embedding noise, then restore
one clean activation at a time and record how much of the old object's probability comes back.

For every layer and every subject token and the last token, one restored run each for the layer's
hidden state (residual stream after the layer), its MLP output, its whole attention output and
each of its heads. The indirect effect is IE = p_restored(old) - p_corrupted(old).

Component scores (heads and MLPs): position group "subject" holds the largest-|IE| over the
subject tokens, "last" the IE at the final token. The per-token traces of hidden states, MLPs and
attention (the ROME picture) of the edit prompt go to `details["trace"]`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..evaluate.scoring import (
    hidden_states,
    input_device,
    logits_from_hidden,
    prompt_and_target_ids,
)
from ..models.arch import get_adapter
from ..models.components import HEAD, MLP, Component
from .base import ComponentScore, LocalizationResult, LocalizeConfig, mean_over_prompts, register
from .patching import (
    LocalizationError,
    row_patcher,
    site_hooks,
    subject_noise,
    subject_token_positions,
)

BATCH_SIZE = 32
HIDDEN = "hidden"
ATTN = "attn"


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


def decoder_layer(model: nn.Module, adapter, layer: int) -> nn.Module:
    return model.get_submodule(adapter.layer_name(layer))


@contextmanager
def layer_output_hooks(model: nn.Module, adapter, fn) -> Iterator[None]:
    """Call `fn(layer, hidden)` on every decoder layer's output hidden state; a tensor replaces it."""
    handles = []

    def make(layer):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = fn(layer, hidden)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    try:
        for layer in range(adapter.num_layers(model)):
            handles.append(decoder_layer(model, adapter, layer).register_forward_hook(make(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def answer_prob(model: nn.Module, prompt: FactPrompt, ids: torch.Tensor) -> torch.Tensor:
    """(B,) probability of the answer's first token after the prompt."""
    hidden = hidden_states(model, ids, torch.ones_like(ids))
    logits = logits_from_hidden(model, hidden[:, prompt.last_position])
    return torch.softmax(logits, dim=-1)[:, prompt.answer_token]


@torch.no_grad()
def trace_prompt(model, adapter, prompt: FactPrompt, batch_size: int = BATCH_SIZE) -> tuple[list[ComponentScore], dict, int]:
    """Restore every (site, token) of one prompt; component scores, the trace, passes spent."""
    num_layers, num_heads = adapter.num_layers(model), adapter.num_heads(model)
    width = adapter.head_dim(model)
    clean_sites: dict = {}
    clean_hidden: dict = {}

    def capture_site(site, act):
        clean_sites[site] = act.detach()

    def capture_hidden(layer, hidden):
        clean_hidden[layer] = hidden.detach()

    with site_hooks(model, adapter, capture_site), layer_output_hooks(model, adapter, capture_hidden):
        p_clean = answer_prob(model, prompt, prompt.ids)[0].item()
    with subject_noise(model, prompt.subject_positions, prompt.noise):
        p_corrupt = answer_prob(model, prompt, prompt.ids)[0].item()
    passes = 2

    positions = prompt.subject_positions + [prompt.last_position]
    jobs = []  # (what, layer, head, position)
    for layer in range(num_layers):
        for pos in positions:
            jobs.append((HIDDEN, layer, None, pos))
            jobs.append((MLP, layer, None, pos))
            jobs.append((ATTN, layer, None, pos))
            jobs.extend((HEAD, layer, h, pos) for h in range(num_heads))

    effects: dict = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        site_rows: dict = {}
        hidden_rows: dict = {}
        for row, (what, layer, head, pos) in enumerate(chunk):
            if what == HIDDEN:
                hidden_rows.setdefault(layer, []).append((row, pos))
            else:
                dims = slice(head * width, (head + 1) * width) if what == HEAD else slice(None)
                site = (layer, MLP if what == MLP else HEAD)
                site_rows.setdefault(site, []).append((row, pos, dims))

        restore_site = row_patcher(site_rows, clean_sites)

        def restore_hidden(layer, hidden, hidden_rows=hidden_rows):
            if layer not in hidden_rows:
                return None
            hidden = hidden.clone()
            for row, pos in hidden_rows[layer]:
                hidden[row, pos] = clean_hidden[layer][0, pos]
            return hidden

        ids = prompt.ids.expand(len(chunk), -1)
        with subject_noise(model, prompt.subject_positions, prompt.noise), \
                site_hooks(model, adapter, restore_site), layer_output_hooks(model, adapter, restore_hidden):
            probs = answer_prob(model, prompt, ids)
        passes += 1
        for job, value in zip(chunk, probs.tolist(), strict=True):
            effects[job] = value - p_corrupt

    scores: list[ComponentScore] = []
    for layer in range(num_layers):
        comps = [(Component(layer, HEAD, h), HEAD, h) for h in range(num_heads)] + [(Component(layer, MLP), MLP, None)]
        for comp, what, head in comps:
            subject = [effects[(what, layer, head, p)] for p in prompt.subject_positions]
            scores.append(ComponentScore(comp, "subject", max(subject, key=abs)))
            scores.append(ComponentScore(comp, "last", effects[(what, layer, head, prompt.last_position)]))
    trace = {
        "p_clean": p_clean, "p_corrupt": p_corrupt, "positions": positions,
        "subject_positions": prompt.subject_positions,
        **{what: [[effects[(what, layer, None, p)] for p in positions] for layer in range(num_layers)]
           for what in (HIDDEN, MLP, ATTN)},
    }
    return scores, trace, passes


@register("causal-tracing")
def causal_tracing(model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult:
    start = time.perf_counter()
    adapter = get_adapter(model)
    prompts = fact_prompts(model, tokenizer, request, config, noise=True)
    results = [trace_prompt(model, adapter, p) for p in prompts]
    trace = results[0][1]
    ids = prompts[0].ids[0].tolist()
    trace["tokens"] = [tokenizer.decode([ids[p]]) for p in trace["positions"]]
    trace["prompt"] = request.fill(prompts[0].template)
    return LocalizationResult(
        method="causal-tracing", scores=mean_over_prompts([r[0] for r in results]),
        passes=sum(r[2] for r in results), seconds=time.perf_counter() - start,
        corruption=f"subject noise x{config.noise_scale} embedding std (seed {config.seed})",
        details={"prompts": len(prompts), "metric": "p(old object) restored - corrupted",
                 "p_clean": [r[1]["p_clean"] for r in results],
                 "p_corrupt": [r[1]["p_corrupt"] for r in results], "trace": trace},
    )
