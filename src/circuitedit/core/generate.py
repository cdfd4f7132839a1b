"""Greedy decoding with a KV cache, ending at EOS, special and markup tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .forward import body, cache_keyword, input_device
from .head import head_top
from .matching import names_object_settled
from .tokens import encode_text, pad_rows


@dataclass
class GreedyOutput:
    texts: list[str]  # new text only
    first_margins: list[float]  # top-1 minus top-2 logit of the first generated token


def greedy_continuations(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 16
) -> list[str]:
    """Greedy continuations (new text only) of already-rendered prompts."""
    return greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size).texts


@torch.no_grad()
def greedy_generate(
    model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 16,
    stop_at: Sequence[str | None] | None = None,
) -> GreedyOutput:
    """Greedy continuations of already-rendered prompts, with the first token's margin.

    A KV-cached loop over the transformer body, left padding with explicit position ids, and
    the LM head applied to one contiguous (B, H) state per step: faster on CPU than `generate`.

    stop_at: per prompt, an object (or None) whose settled appearance ends that prompt's
    continuation early: `contains_object` then gives what it gives on the full-length text. Rows
    that stop or reach EOS leave the batch, so the 262k-wide LM head runs on live rows only.
    """
    device = input_device(model)
    output = GreedyOutput([], [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    control = special_token_ids(tokenizer)
    cache_kw = cache_keyword(body(model))
    stop_at = [None] * len(prompts) if stop_at is None else list(stop_at)
    for start in range(0, len(prompts), batch_size):
        ids = [encode_text(tokenizer, p) for p in prompts[start:start + batch_size]]
        stops = stop_at[start:start + batch_size]
        input_ids, mask = pad_rows(ids, pad, side="left", device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        past = None
        tokens: list[list[int]] = [[] for _ in ids]
        live = list(range(len(ids)))  # prompt index of each batch row
        finished: set[int] = set()
        for step in range(max_new_tokens):
            out = body(model)(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                              use_cache=True, **{cache_kw: past})
            past = getattr(out, cache_kw)
            # The argmax (and at the first token the top-2) of each row from the head in chunks,
            # never the (B, V) logits.
            top_index, top_values = head_top(model, out.last_hidden_state[:, -1], k=2 if step == 0 else 1)
            if step == 0:
                output.first_margins.extend((top_values[:, 0] - top_values[:, 1]).tolist())
            next_ids = top_index.to(device)
            for index, token in zip(live, next_ids.tolist(), strict=True):
                if index in finished:
                    continue
                if token in control or is_control_token(tokenizer, token):
                    finished.add(index)  # the end of the text: never shown, nothing follows it
                    continue
                tokens[index].append(token)
                stop = stops[index]
                if stop and names_object_settled(tokenizer.decode(tokens[index], skip_special_tokens=True), stop):
                    finished.add(index)
            if len(finished) == len(ids) or step == max_new_tokens - 1:
                break
            keep = [row for row, index in enumerate(live) if index not in finished]
            if len(keep) < len(live) and hasattr(past, "batch_select_indices"):
                keep_rows = torch.tensor(keep, device=device)
                past.batch_select_indices(keep_rows)
                live = [live[row] for row in keep]
                next_ids, positions, mask = next_ids[keep_rows], positions[keep_rows], mask[keep_rows]
            elif len(keep) < len(live):  # a cache without batch selection: finished rows are fed padding
                next_ids = torch.tensor([pad if index in finished else token
                                         for index, token in zip(live, next_ids.tolist(), strict=True)], device=device)
            input_ids = next_ids[:, None]
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(input_ids)], dim=1)
        output.texts.extend(tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return output


# Markup tokens a vocabulary may hold as ordinary entries (Gemma-3's "<start_of_image>",
# "<end_of_turn>", "[multimodal]"): a continuation ends there like at EOS.
CONTROL_TOKEN = re.compile(r"<\|?\w*_\w*\|?>|<unused\d+>|\[[a-z_]+\]")


def special_token_ids(tokenizer) -> set[int]:
    """EOS, every special token and every added token the tokenizer marks special."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, added in tokenizer.added_tokens_decoder.items() if added.special)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def is_control_token(tokenizer, token_id: int) -> bool:
    """Whether a generated token is markup rather than text (see CONTROL_TOKEN)."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    return isinstance(piece, str) and CONTROL_TOKEN.fullmatch(piece) is not None
