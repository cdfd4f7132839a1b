"""The training rows' LM-head reductions over a shortlist of tokens, checked on the full vocabulary.

A training step needs, per row, the target's logit, the log-sum-exp and the best competitor.
Nearly all of the softmax sits on a few dozen tokens per row, so most steps compute the logits
of a shortlist only: each row's `top_k` tokens at the last full-vocabulary pass plus the picked
ones, with the rest of the vocabulary's log-sum-exp (the tail) estimated from a fixed sample of
its tokens, calibrated at that pass (TailEstimate). A full
pass runs at the first step, every `full_every` steps, and whenever the shortlisted margins say
the targets are reached, so the stopping rule is always judged on the whole vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core.head import HeadReductions, Shortlist, TailEstimate, head_reductions


class ShortlistedHead:
    def __init__(self, model: nn.Module, pick: torch.Tensor, top_k: int | None, full_every: int,
                 tail_sample: int = 2048):
        self.model, self.pick = model, pick  # pick: (N, K) token ids
        self.top_k, self.full_every, self.tail_sample = top_k, max(1, full_every), tail_sample
        self.shortlist: Shortlist | None = None
        self.tail: TailEstimate | None = None  # None: nothing outside the shortlist
        self.age = 0  # shortlisted passes since the last full one
        self.full_passes = 0

    def __call__(self, hidden: torch.Tensor) -> tuple[HeadReductions, bool]:
        """Reductions of `hidden` (N, H), and whether they are over the full vocabulary."""
        if not self.top_k:
            self.full_passes += 1
            return head_reductions(self.model, hidden, self.pick), True
        if self.shortlist is None or self.age + 1 >= self.full_every:
            out = head_reductions(self.model, hidden, self.pick, top_k=self.top_k)
            self._refresh(out, hidden)
            return out, True
        self.age += 1
        tail = None if self.tail is None else self.tail(self.model, hidden)
        return head_reductions(self.model, hidden, self.pick, shortlist=self.shortlist, tail=tail), False

    @torch.no_grad()
    def full(self, hidden: torch.Tensor) -> HeadReductions:
        """A full-vocabulary pass without gradient (the check of a shortlisted result); its best
        tokens join the shortlist, so a competitor it finds is trained against from the next step."""
        out = head_reductions(self.model, hidden.detach(), self.pick, top_k=self.top_k or 0)
        if self.top_k:
            self._refresh(out, hidden)
        else:
            self.full_passes += 1
        return out

    @torch.no_grad()
    def _refresh(self, full: HeadReductions, hidden: torch.Tensor) -> None:
        tokens = torch.cat([full.top_tokens.flatten(), self.pick.flatten().to(full.top_tokens.device)])
        self.shortlist = Shortlist.of(self.model, tokens)
        self.tail = TailEstimate.drawn(self.model, self.shortlist, self.tail_sample)
        hidden = hidden.detach()
        inside = head_reductions(self.model, hidden, self.pick, shortlist=self.shortlist).lse
        full_lse = full.lse.detach()
        # log(exp(full) - exp(inside)); a shortlist holding all but ~1e-6 of the mass leaves a
        # tail that fp32 cannot resolve, and one that small changes nothing.
        share = (inside - full_lse).clamp(max=-1e-6)
        true_tail = full_lse + torch.log(-torch.expm1(share))
        if self.tail is not None:
            self.tail.log_scale = true_tail - self.tail.sample_lse(self.model, hidden)
        self.age = 0
        self.full_passes += 1
