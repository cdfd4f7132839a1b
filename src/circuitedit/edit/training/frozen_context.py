"""Training rows whose leading context is run once per stage and reused from its KV cache.

The model-generated prefixes before the edit prompt ("The 2019 NFL season was. The Eiffel
Tower is located in the city of") are there so that the edit holds after unrelated text, not to
be trained: their keys and values are taken at the stage's starting weights, once, and every
step runs only the prompt and target tokens against them, detached: about half of each row's
tokens (evidence: docs/speed.md). A chat model's chat-rendered prompts are several times longer
than its cloze ones, so rows of very different lengths run in length buckets (BucketedRows), as
the retain set's do, never the short ones padded to the longest.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.forward import body, cache_keyword, hidden_states
from ...core.tokens import (
    TeacherForcedBatch,
    batch_from_ids,
    encode_text,
    pad_rows,
    padding_id,
    prompt_and_target_ids,
)
from .retain import FORWARD_OVERHEAD_TOKENS, length_buckets


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass
class FrozenContextBatch:
    """`live` indexes the live tokens only (right-padded); the context is left-padded before them."""

    live: TeacherForcedBatch
    context_ids: torch.Tensor  # (B, C); C may be 0
    context_mask: torch.Tensor  # (B, C)
    position_ids: torch.Tensor  # (B, T) of the live tokens, continuing each row's context
    cache: object | None = None  # the context's KV cache, set by `record`

    @property
    def context_width(self) -> int:
        return self.context_ids.shape[1]

    @torch.no_grad()
    def record(self, model: nn.Module) -> None:
        """Run the context on `model` as it is now (the stage's starting weights)."""
        if self.context_width == 0:
            return
        positions = (self.context_mask.cumsum(-1) - 1).clamp(min=0)
        out = body(model)(input_ids=self.context_ids, attention_mask=self.context_mask, position_ids=positions,
                          use_cache=True)
        self.cache = getattr(out, cache_keyword(body(model)))

    def hidden(self, model: nn.Module) -> torch.Tensor:
        """(B, T, H) final hidden states of the live tokens."""
        if self.cache is None:
            return hidden_states(model, self.live.input_ids, self.live.attention_mask)
        mask = torch.cat([self.context_mask, self.live.attention_mask], dim=1)
        out = body(model)(input_ids=self.live.input_ids, attention_mask=mask, position_ids=self.position_ids,
                          use_cache=True, **{cache_keyword(body(model)): fresh_copy(self.cache)})
        return out.last_hidden_state


def fresh_copy(cache):
    """A cache the forward may append to while `cache` stays as it is. Cache layers (transformers
    5) rebind their key and value tensors on update, so copying the layer objects is enough and
    the tensors are shared; older caches, whose lists are updated in place, are deep-copied."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return copy.deepcopy(cache)
    fresh = copy.copy(cache)
    fresh.layers = [copy.copy(layer) for layer in layers]
    return fresh


def build_frozen_context_batch(
    tokenizer, prompts: Sequence[str], contexts: Sequence[str] | None, targets: Sequence[str],
    device: torch.device | str = "cpu",
) -> FrozenContextBatch:
    """Split each `prompt + target` after its context (a leading part of the prompt's text; ""
    for none, which still freezes a BOS token). At least the prompt's last token stays live: its
    hidden state predicts the first target token."""
    contexts = [""] * len(prompts) if contexts is None else list(contexts)
    live_pairs, context_rows = [], []
    for prompt, context, target in zip(prompts, contexts, targets, strict=True):
        if not prompt.startswith(context):
            raise ValueError(f"training context {context!r} does not start prompt {prompt!r}")
        p_ids, t_ids = prompt_and_target_ids(tokenizer, prompt, target)
        cut = min(_common_prefix(encode_text(tokenizer, context), p_ids + t_ids), len(p_ids) - 1)
        context_rows.append(p_ids[:cut])
        live_pairs.append((p_ids[cut:], t_ids))
    pad = padding_id(tokenizer)
    live = batch_from_ids(live_pairs, pad, device)
    # left padding: every row's context ends where its live tokens start
    context_ids, context_mask = pad_rows(context_rows, pad, side="left", device=device)
    cuts = torch.tensor([len(ctx) for ctx in context_rows])
    position_ids = cuts[:, None] + torch.arange(live.input_ids.shape[1])[None, :]
    return FrozenContextBatch(live, context_ids, context_mask, position_ids.to(device))


@dataclass
class BucketedRows:
    """Training rows of very different live lengths (a chat model's chat-rendered prompts beside
    its cloze ones), run as one FrozenContextBatch per length bucket so that no short row is
    padded to the longest: `live` indexes the whole batch, as one FrozenContextBatch's does."""

    live: TeacherForcedBatch
    buckets: list[tuple[list[int], FrozenContextBatch]]  # (rows of `live`, their batch)

    def record(self, model: nn.Module) -> None:
        for _, batch in self.buckets:
            batch.record(model)

    def hidden(self, model: nn.Module) -> torch.Tensor:
        """(B, T, H) final hidden states of the live tokens; zeros past each bucket's width."""
        width = self.live.input_ids.shape[1]
        parts, order = [], []
        for rows, batch in self.buckets:
            hidden = batch.hidden(model)
            parts.append(F.pad(hidden, (0, 0, 0, width - hidden.shape[1])))
            order += rows
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts)[inverse.to(parts[0].device)]


def build_training_rows(
    tokenizer, prompts: Sequence[str], contexts: Sequence[str] | None, targets: Sequence[str],
    device: torch.device | str = "cpu", overhead: int = FORWARD_OVERHEAD_TOKENS,
) -> FrozenContextBatch | BucketedRows:
    """`build_frozen_context_batch` of the rows, in length buckets of their live tokens when
    several forwards run fewer tokens, `overhead` each, than one (`length_buckets`); rows of
    similar lengths stay the one batch they were."""
    whole = build_frozen_context_batch(tokenizer, prompts, contexts, targets, device)
    groups = length_buckets(whole.live.attention_mask.sum(1).tolist(), overhead)
    if len(groups) == 1:
        return whole
    contexts = [""] * len(prompts) if contexts is None else list(contexts)
    buckets = []
    for group in map(sorted, groups):  # each bucket's rows in the order given
        buckets.append((group, build_frozen_context_batch(tokenizer, [prompts[i] for i in group],
                                                          [contexts[i] for i in group], [targets[i] for i in group],
                                                          device)))
    return BucketedRows(whole.live, buckets)
