"""The retain set: prompts whose next-token distribution an edit must leave where it was.

Its forward pass is most of a training step, so it runs in length buckets: one right-padded
batch per group of similar lengths, never a short prompt padded to the longest one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...core.forward import hidden_states, input_device, logits_from_hidden
from ...core.head import Shortlist, TailEstimate, head_reductions
from ...core.tokens import encode_text, pad_rows, padding_id

# What one more forward pass costs, in padded tokens: a pass's fixed cost (per-op dispatch,
# weights read) against its cost per token (evidence: docs/speed.md).
FORWARD_OVERHEAD_TOKENS = 32
# Rises of a watched log-probability up to this many nats are rounding, not leaks: the current
# log-probabilities come from chunked sums and other batch compositions than the reference's, so
# at the reference model they differ from it by ~1e-6 either way, and a hinge at exactly 0 would
# turn that noise into gradient (which Adam would then scale up to full-size steps).
LEAK_TOLERANCE = 1e-4


def length_buckets(lengths: Sequence[int], overhead: int = FORWARD_OVERHEAD_TOKENS) -> list[list[int]]:
    """Positions of `lengths` grouped so that padded tokens, plus `overhead` per group, are fewest.

    Groups are runs of the lengths in sorted order (an optimal grouping always is); exact dynamic
    programming over the split points, O(n^2) for a batch of n rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of grouping the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]  # the longest of rows i..j-1 in sorted order
        for i in range(j):
            cost = best[i] + (j - i) * width + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


@dataclass
class ShortlistedReference:
    """The retain set's reference distributions on a token shortlist, the rest one bucket."""

    shortlist: Shortlist
    log_weights: torch.Tensor  # (R, C) reference log-probs of the shortlisted tokens
    tail_mass: torch.Tensor  # (R,) reference probability of all the other tokens
    tail: TailEstimate | None  # their log-sum-exp, calibrated on the unedited model (None: no others)
    negative_entropy: torch.Tensor  # (R,) of the bucketed reference distribution


@dataclass
class RetainSet:
    """Prompts whose next-token distribution must stay where the original model had it."""

    input_ids: torch.Tensor  # (R, T) right-padded
    attention_mask: torch.Tensor  # (R, T)
    last: torch.Tensor  # (R,)
    reference_logprobs: torch.Tensor  # (R, V) from the unedited model
    prompts: list[str]
    pinned: int = 0  # the first `pinned` prompts are in every step's batch
    reference_negative_entropy: torch.Tensor | None = None  # (R,) sum_v p_ref log p_ref
    reference_lse: torch.Tensor | None = None  # (R,) log-sum-exp of the unedited model's logits

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, tokenizer, prompts: Sequence[str], pinned: int = 0) -> RetainSet:
        """The rotating (unpinned) prompts are kept in length order, so that the group a step
        takes in turn has similar lengths and runs as few buckets."""
        ids = [encode_text(tokenizer, p) for p in prompts]
        rotating = sorted(range(pinned, len(prompts)), key=lambda i: len(ids[i]))
        keep = list(range(pinned)) + rotating
        ids, prompts = [ids[i] for i in keep], [prompts[i] for i in keep]
        device = input_device(model)
        input_ids, mask = pad_rows(ids, padding_id(tokenizer), device=device)
        last = torch.tensor([len(r) - 1 for r in ids], device=device)
        retain = cls(input_ids, mask, last, torch.empty(0), list(prompts), pinned)
        logits = retain.logits(model).detach()
        retain.reference_lse = logits.logsumexp(-1)
        retain.reference_logprobs = logits - retain.reference_lse[:, None]
        retain.reference_negative_entropy = (retain.reference_logprobs.exp() * retain.reference_logprobs).sum(-1)
        return retain

    def last_hidden(self, model: nn.Module, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(R', H) final hidden states at the last token of the prompts in `rows` (all by default)."""
        rows = torch.arange(len(self.last), device=self.last.device) if rows is None else rows
        lengths = (self.last[rows] + 1).tolist()
        parts, positions = [], []
        for bucket in length_buckets(lengths):
            selected = rows[bucket]
            width = max(lengths[i] for i in bucket)  # right padding: later columns change nothing
            hidden = hidden_states(model, self.input_ids[selected, :width], self.attention_mask[selected, :width])
            index = torch.arange(len(bucket), device=hidden.device)
            parts.append(hidden[index, self.last[selected].to(hidden.device)])  # (b, H)
            positions += bucket
        order = torch.empty(len(positions), dtype=torch.long)
        order[torch.tensor(positions)] = torch.arange(len(positions))
        return torch.cat(parts)[order.to(parts[0].device)]

    def logits(self, model: nn.Module, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(R', V) fp32 next-token logits of the prompts in `rows` (all by default)."""
        return logits_from_hidden(model, self.last_hidden(model, rows))

    def logprobs(self, model: nn.Module, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(R', V) next-token log-probs of the prompts in `rows` (all by default)."""
        return torch.log_softmax(self.logits(model, rows), -1)

    def rows_for_step(self, step: int, size: int) -> torch.Tensor:
        """The pinned prompts plus the next `size` of the others, in turn."""
        count, device = len(self.last), self.last.device
        rotating = count - self.pinned
        if size <= 0 or size >= rotating:
            return torch.arange(count, device=device)
        turn = self.pinned + (torch.arange(size, device=device) + step * size) % rotating
        return torch.cat([torch.arange(self.pinned, device=device), turn])

    def shortlisted(self, model: nn.Module, top_k: int, extra: torch.Tensor | None = None,
                    tail_sample: int = 2048) -> ShortlistedReference:
        """The reference on a shortlist: each prompt's `top_k` most likely tokens, plus `extra`."""
        tokens = self.reference_logprobs.topk(top_k, -1).indices.flatten()
        if extra is not None:
            tokens = torch.cat([tokens, extra.to(tokens.device)])
        shortlist = Shortlist.of(model, tokens)
        log_weights = self.reference_logprobs[:, shortlist.tokens.to(self.reference_logprobs.device)]  # (R, C)
        inside = log_weights.exp()
        tail_mass = (1 - inside.sum(-1)).clamp(min=1e-12)  # (R,)
        negative_entropy = (inside * log_weights).sum(-1) + tail_mass * tail_mass.log()
        tail = TailEstimate.drawn(model, shortlist, tail_sample)
        if tail is None:
            tail_mass = torch.zeros_like(tail_mass)
        else:
            sampled = self.reference_logprobs[:, tail.sample.tokens.to(self.reference_logprobs.device)]
            tail.log_scale = tail_mass.log() - sampled.logsumexp(-1)  # in log-prob units: lse cancels
        return ShortlistedReference(shortlist, log_weights, tail_mass, tail, negative_entropy)

    def kl_and_leak(self, model: nn.Module, rows: torch.Tensor | None = None,
                    watched: torch.Tensor | None = None,
                    shortlisted: ShortlistedReference | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean KL(original || current) over the prompts in `rows`, and the mean rise (hinge) of
        the `watched` tokens' log-probabilities over their original values (0 without any).

        From the head's chunked reductions, never the (R', V) log-softmax:
        KL = sum_v p_ref log p_ref - sum_v p_ref z_v + (sum_v p_ref) logsumexp(z).
        With `shortlisted`, the KL of the distributions over its tokens plus one bucket for all
        the others (its logit estimated from a sample of them): zero, with zero gradient, at the
        reference, and near a lower bound of the full KL (the bucket merges tokens)."""
        rows = torch.arange(len(self.last), device=self.last.device) if rows is None else rows
        hidden = self.last_hidden(model, rows)  # (R', H)
        watched = torch.zeros(0, dtype=torch.long) if watched is None else watched
        pick = watched.to(hidden.device)[None, :].expand(len(rows), -1)  # (R', W)
        ref_rows = rows.to(self.reference_logprobs.device)
        if shortlisted is None:
            out = head_reductions(model, hidden, pick, self.reference_logprobs, rows)
            negative_entropy = self.reference_negative_entropy[ref_rows].to(out.lse.device)
            kl = (negative_entropy - out.weighted + out.weight_mass * out.lse).mean()
        else:
            tail = None if shortlisted.tail is None else shortlisted.tail(model, hidden, ref_rows)  # (R',)
            out = head_reductions(model, hidden, pick, shortlisted.log_weights, rows,
                                  shortlist=shortlisted.shortlist, tail=tail)
            tail_mass = shortlisted.tail_mass[ref_rows].to(out.lse.device)
            negative_entropy = shortlisted.negative_entropy[ref_rows].to(out.lse.device)
            cross = out.weighted if tail is None else out.weighted + tail_mass * tail.to(out.lse.device)
            kl = (negative_entropy - cross + (out.weight_mass + tail_mass) * out.lse).mean()
        if watched.numel() == 0:
            return kl, kl.new_zeros(())
        reference = self.reference_logprobs[ref_rows[:, None], watched.to(ref_rows.device)[None, :]]  # (R', W)
        rise = out.log_probs() - reference.to(out.lse.device)
        return kl, torch.relu(rise - LEAK_TOLERANCE).mean()
