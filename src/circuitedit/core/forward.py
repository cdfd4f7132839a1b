"""Forward passes: final hidden states, the LM head at chosen positions, object log-probs."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .head import head_reductions
from .tokens import (
    TeacherForcedBatch,
    build_batch,
    common_prefix_length,
    encode_text,
    pad_rows,
    padding_id,
)


def input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def body(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (Gemma3TextModel, GPT2Model, ...)."""
    return model.base_model


def hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states, (B, T, H). Right padding, so positions are 0..T-1 per row."""
    return body(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def logits_from_hidden(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits for a (N, H) selection of hidden states, in fp32."""
    head = model.get_output_embeddings()
    hidden = hidden.reshape(-1, hidden.shape[-1]).contiguous().to(head.weight.device)
    logits = head(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def selected_logits(model: nn.Module, batch: TeacherForcedBatch) -> torch.Tensor:
    """(N, V) logits at the batch's scored positions."""
    hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
    return logits_from_hidden(model, hidden[batch.rows.to(hidden.device), batch.positions.to(hidden.device)])


@torch.no_grad()
def object_logprobs(
    model: nn.Module, tokenizer, prompts: Sequence[str], objects: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """Summed log-probability of each object after its prompt (multi-token objects summed)."""
    device = input_device(model)
    scores: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(tokenizer, prompts[start:start + batch_size], objects[start:start + batch_size], device)
        hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
        # Each target's log-probability from the head in chunks, never the (N, V) log-softmax.
        head = head_reductions(model, hidden[batch.rows.to(hidden.device), batch.positions.to(hidden.device)],
                               batch.targets[:, None])
        token_lp = head.log_probs()[:, 0]
        summed = torch.zeros(len(batch.last_positions), device=token_lp.device).index_add_(
            0, batch.owners.to(token_lp.device), token_lp
        )
        scores.append(summed.cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


@torch.no_grad()
def iter_last_token_hidden(
    model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16, share_prefix: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices into `prompts`, (len(indices), H) final hidden states at their last token) per batch.

    Prompts are batched by length, so short prompts are not padded to the longest one. With
    `share_prefix`, the leading tokens every prompt of a batch has in common (a filled template's
    BOS and "The") run once, and the rows continue from their keys and values.
    """
    device = input_device(model)
    encoded = [encode_text(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad = padding_id(tokenizer)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        ids = [encoded[i] for i in indices]
        shared = common_prefix_length(ids) if share_prefix and len(ids) > 1 else 0
        rows = [r[shared:] for r in ids]
        input_ids, mask = pad_rows(rows, pad, device=device)
        if shared:
            hidden = continued_hidden_states(model, ids[0][:shared], input_ids, mask)
        else:
            hidden = hidden_states(model, input_ids, mask)
        last = torch.tensor([len(r) - 1 for r in rows], device=hidden.device)
        yield indices, hidden[torch.arange(len(ids), device=hidden.device), last]


def continued_hidden_states(model: nn.Module, prefix: Sequence[int], input_ids: torch.Tensor,
                            attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H) final hidden states of right-padded rows that all follow the same `prefix`
    tokens; the prefix runs once and its keys and values serve every row."""
    core = body(model)
    prefix_ids = torch.tensor([list(prefix)], device=input_ids.device)
    keyword = cache_keyword(core)
    cache = getattr(core(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True), keyword)
    mask = torch.cat([attention_mask.new_ones(input_ids.shape[0], len(prefix)), attention_mask], dim=1)
    if not hasattr(cache, "batch_repeat_interleave"):  # a legacy tuple cache: run the rows whole
        whole = torch.cat([prefix_ids.expand(input_ids.shape[0], -1), input_ids], dim=1)
        return hidden_states(model, whole, mask)[:, len(prefix):]
    cache.batch_repeat_interleave(input_ids.shape[0])
    positions = len(prefix) + torch.arange(input_ids.shape[1], device=input_ids.device)
    out = core(input_ids=input_ids, attention_mask=mask, position_ids=positions.expand(input_ids.shape[0], -1),
               use_cache=True, **{keyword: cache})
    return out.last_hidden_state


@torch.no_grad()
def last_token_logits(model: nn.Module, tokenizer, prompts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """(P, V) next-token logits after each prompt."""
    out: torch.Tensor | None = None
    for indices, hidden in iter_last_token_hidden(model, tokenizer, prompts, batch_size):
        logits = logits_from_hidden(model, hidden)
        if out is None:
            out = logits.new_empty(len(prompts), logits.shape[-1], device="cpu")
        out[indices] = logits.cpu()
    return out if out is not None else torch.zeros(0)


def cache_keyword(module: nn.Module) -> str:
    """The KV-cache argument's name: `cache` from transformers 5.x on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
