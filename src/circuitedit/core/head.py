"""The few per-row reductions of the LM head's logits that training, greedy decoding and
hard-negative scoring need, computed over vocabulary chunks so that no (rows, vocab) matrix is
ever written out.

Every training loss is a function of a row's log-sum-exp, of a few picked logits (target, old
object, watched tokens) and, for the KL term, of the reference-weighted sum of its logits. With a
262k-token vocabulary the (rows, V) fp32 logits, their log-softmax and its gradient are 31 MB
each for 30 rows; on CPU each new one is fresh pages from the OS, and filling, copying and
softmaxing them cost about as much as the body's forward (evidence: docs/speed.md). Chunks of a
few MB stay in cache and are reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CHUNK_COLUMNS = 16384


@dataclass
class HeadReductions:
    pick: torch.Tensor  # (N, K) the token ids picked
    lse: torch.Tensor  # (N,) log-sum-exp of each row's logits (differentiable)
    picked: torch.Tensor  # (N, K) the logits at `pick` (differentiable)
    weighted: torch.Tensor | None  # (N,) sum_v exp(log_weights[n, v]) * logits[n, v] (differentiable)
    weight_mass: torch.Tensor | None  # (N,) sum_v exp(log_weights[n, v])
    top_values: torch.Tensor  # (N, 2) the two largest logits of each row
    top_index: torch.Tensor  # (N,) the argmax (the lowest token id among ties, as torch.argmax)
    top_tokens: torch.Tensor  # (N, top_k) the highest-scoring token ids, best first ((N, 0) unless asked)

    def log_probs(self) -> torch.Tensor:
        """(N, K) log-probabilities of the picked tokens."""
        return self.picked - self.lse[:, None]

    def margins(self, column: int = 0) -> torch.Tensor:
        """(N,) the logit of the picked token in `column` minus the best other logit."""
        is_top = self.pick[:, column] == self.top_index
        best_other = torch.where(is_top, self.top_values[:, 1], self.top_values[:, 0])
        return self.picked[:, column].detach() - best_other


def _cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap if cap else logits


def _in_chunk(pick: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the picks inside columns start..start+width, their column within the chunk)."""
    inside = (pick >= start) & (pick < start + width)
    return inside, (pick - start).clamp(0, width - 1)


class _ChunkedReductions(torch.autograd.Function):
    """lse, picked logits and weighted sums of cap(x @ W.T + b), chunk by chunk. The raw chunks
    are kept in the weight's dtype for the backward (N x V x 2 bytes in bf16, in pieces)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, cap, pick, log_weights, weight_rows, keep_chunks, top_k):
        x = hidden.to(weight.dtype).contiguous()  # (N, H)
        rows, device = x.shape[0], x.device
        running_max = torch.full((rows,), float("-inf"), device=device)
        running_sum = torch.zeros(rows, device=device)
        top_values = torch.full((rows, 2), float("-inf"), device=device)
        top_index = torch.zeros(rows, dtype=torch.long, device=device)
        picked = torch.zeros(pick.shape, device=device)
        weighted = torch.zeros(rows if log_weights is not None else 0, device=device)
        mass = torch.zeros_like(weighted)
        best_values = torch.empty(rows, 0, device=device)
        best_tokens = torch.empty(rows, 0, dtype=torch.long, device=device)
        chunks = []
        for start in range(0, weight.shape[0], CHUNK_COLUMNS):
            raw = x @ weight[start:start + CHUNK_COLUMNS].T  # (N, C)
            if bias is not None:
                raw = raw + bias[start:start + CHUNK_COLUMNS]
            if keep_chunks:
                chunks.append(raw)
            z = _cap(raw.float(), cap)
            chunk_best = z.max(-1)
            new_max = torch.maximum(running_max, chunk_best.values)
            shifted = (z - new_max[:, None]).exp_()  # one temporary for the chunk's softmax terms
            running_sum = running_sum * torch.exp(running_max - new_max) + shifted.sum(-1)
            running_max = new_max
            ahead = chunk_best.values > top_values[:, 0]  # strict: ties keep the lowest token id, as argmax
            top_index = torch.where(ahead, chunk_best.indices + start, top_index)
            values = z.topk(min(2, z.shape[1]), -1).values
            top_values = torch.cat([top_values, values], 1).topk(2, -1).values
            inside, column = _in_chunk(pick, start, z.shape[1])
            picked = torch.where(inside, z.gather(1, column), picked)
            if top_k:
                chunk_top = z.topk(min(top_k, z.shape[1]), -1)
                values = torch.cat([best_values, chunk_top.values], 1)
                tokens = torch.cat([best_tokens, chunk_top.indices + start], 1)
                best = values.topk(min(top_k, values.shape[1]), -1)
                best_values, best_tokens = best.values, tokens.gather(1, best.indices)
            if log_weights is not None:
                w = log_weights[weight_rows, start:start + z.shape[1]].to(device).float().exp()  # (N, C)
                weighted += (w * z).sum(-1)
                mass += w.sum(-1)
        lse = running_max + running_sum.log()
        ctx.save_for_backward(weight, lse, pick, log_weights, weight_rows)
        ctx.chunks, ctx.cap, ctx.hidden_dtype = chunks, cap, hidden.dtype
        ctx.mark_non_differentiable(mass, top_values, top_index, best_tokens)
        return lse, picked, weighted, mass, top_values, top_index, best_tokens

    @staticmethod
    def backward(ctx, grad_lse, grad_picked, grad_weighted, *_):
        weight, lse, pick, log_weights, weight_rows = ctx.saved_tensors
        grad_x = torch.zeros(lse.shape[0], weight.shape[1], device=lse.device)  # (N, H) fp32
        start = 0
        for raw in ctx.chunks:
            z = _cap(raw.float(), ctx.cap)
            grad_z = (z - lse[:, None]).exp_().mul_(grad_lse[:, None])  # d lse / d z is the softmax
            inside, column = _in_chunk(pick, start, z.shape[1])
            grad_z.scatter_add_(1, column, grad_picked * inside)
            if log_weights is not None:
                w = log_weights[weight_rows, start:start + z.shape[1]].to(z.device).float().exp()
                grad_z += grad_weighted[:, None] * w
            if ctx.cap:
                grad_z *= 1 - (z / ctx.cap) ** 2  # through cap * tanh(raw / cap)
            grad_x += (grad_z.to(weight.dtype) @ weight[start:start + z.shape[1]]).float()
            start += z.shape[1]
        ctx.chunks = None
        return grad_x.to(ctx.hidden_dtype), None, None, None, None, None, None, None, None


def head_reductions(model: nn.Module, hidden: torch.Tensor, pick: torch.Tensor | None = None,
                    log_weights: torch.Tensor | None = None,
                    weight_rows: torch.Tensor | None = None, *, top_k: int = 0,
                    shortlist: Shortlist | None = None, tail: torch.Tensor | None = None) -> HeadReductions:
    """Reductions of the LM-head logits of `hidden` (N, H), in fp32, softcapped as the model does.

    pick: (N, K) token ids whose logits are returned (none by default). log_weights: (M, V) log-weights (a reference
    log-softmax) and weight_rows (N,) the row of each hidden state in it: `weighted` is then the
    expectation of the logits under those weights, the KL term's cross term. top_k: also return
    each row's `top_k` best token ids.

    shortlist: compute the logits of its tokens only (every pick must be one of them; log_weights
    then has one column per shortlisted token), with tail (N,), an estimate of the log-sum-exp of
    the other tokens' logits (TailEstimate), folded into `lse`. Token ids in and out stay
    vocabulary ids.
    """
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if shortlist is not None:
        weight, bias = shortlist.weight, shortlist.bias
    cap = getattr(model.config, "final_logit_softcapping", None)
    hidden = hidden.reshape(-1, hidden.shape[-1]).to(weight.device)
    pick = (torch.zeros((hidden.shape[0], 0), dtype=torch.long) if pick is None else pick).to(weight.device)
    columns = pick if shortlist is None else shortlist.columns(pick)
    if log_weights is not None and weight_rows is None:
        weight_rows = torch.arange(hidden.shape[0])
    if log_weights is not None:
        weight_rows = weight_rows.to(log_weights.device)
    keep_chunks = torch.is_grad_enabled() and hidden.requires_grad  # no backward, nothing to keep
    lse, picked, weighted, mass, top_values, top_index, top_tokens = _ChunkedReductions.apply(
        hidden, weight, bias, cap, columns, log_weights, weight_rows, keep_chunks, top_k)
    if shortlist is not None:
        top_index, top_tokens = shortlist.tokens[top_index], shortlist.tokens[top_tokens]
        if tail is not None:
            lse = torch.logaddexp(lse, tail.to(lse.device))
    if log_weights is None:
        weighted = mass = None
    return HeadReductions(pick, lse, picked, weighted, mass, top_values, top_index, top_tokens)


@torch.no_grad()
def head_top(model: nn.Module, hidden: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) argmax of the LM-head logits of `hidden` (N, H), the lowest token id among ties as
    torch.argmax, and (N, k) the k largest logits in fp32, k at most 2: what greedy decoding
    needs. Chunked like `head_reductions` but without its softmax sums, so greedy decoding is
    cheaper (evidence: docs/speed.md); the bf16 logits compare exactly as their fp32 copies would."""
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    cap = getattr(model.config, "final_logit_softcapping", None)
    x = hidden.reshape(-1, hidden.shape[-1]).to(weight.device, weight.dtype).contiguous()
    # In fp32 on CPU the chunk's logits are the tall product W_chunk @ x.T, for which MKL picks a
    # faster kernel than for the short, wide x @ W_chunk.T; bf16 keeps x @ W_chunk.T (evidence:
    # docs/speed.md).
    tall = weight.dtype == torch.float32 and x.device.type == "cpu"
    xt = x.T.contiguous() if tall else None  # (H, N)
    top_values = torch.full((x.shape[0], k), float("-inf"), device=x.device)
    top_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    columns = -1 if not tall else 0  # the logits' vocabulary dimension
    for start in range(0, weight.shape[0], CHUNK_COLUMNS):
        z = weight[start:start + CHUNK_COLUMNS] @ xt if tall else x @ weight[start:start + CHUNK_COLUMNS].T
        if bias is not None:
            z = z + (bias[start:start + CHUNK_COLUMNS, None] if tall else bias[start:start + CHUNK_COLUMNS])
        if cap:
            z = _cap(z.float(), cap)
        best = z.max(columns)
        ahead = best.values.float() > top_values[:, 0]  # strict: ties keep the lowest token id
        top_index = torch.where(ahead, best.indices + start, top_index)
        if k == 1:
            values = best.values.float()[:, None]
        else:
            values = z.topk(min(k, z.shape[columns]), columns).values.float()
            values = values.T if tall else values
        top_values = torch.cat([top_values, values], 1).topk(k, -1).values
    return top_index, top_values


@dataclass
class Shortlist:
    """A few thousand of the vocabulary's tokens and their LM-head rows: the only logits a
    training step needs while the rest of the 262k-token vocabulary holds a negligible share of
    the softmax. Each full LM-head pass reads 335-670 MB of weights, a third of a training step."""

    tokens: torch.Tensor  # (C,) sorted token ids
    weight: torch.Tensor  # (C, H) their LM-head rows (a copy)
    bias: torch.Tensor | None  # (C,)
    position: torch.Tensor  # (V,) each token's column in `tokens`, -1 for the others

    @classmethod
    @torch.no_grad()
    def of(cls, model: nn.Module, tokens: torch.Tensor) -> Shortlist:
        head = model.get_output_embeddings()
        tokens = tokens.to(head.weight.device).unique()  # sorted
        bias = getattr(head, "bias", None)
        position = torch.full((head.weight.shape[0],), -1, dtype=torch.long, device=tokens.device)
        position[tokens] = torch.arange(len(tokens), device=tokens.device)
        return cls(tokens, head.weight[tokens].contiguous(), None if bias is None else bias[tokens], position)

    def columns(self, ids: torch.Tensor) -> torch.Tensor:
        """The columns of token `ids` (any shape); every one must be shortlisted."""
        columns = self.position[ids.to(self.position.device)]
        if bool((columns < 0).any()):
            raise ValueError("head_reductions: a picked token is not in the shortlist")
        return columns


@dataclass
class TailEstimate:
    """The log-sum-exp of the logits outside a shortlist, from a fixed uniform sample of those
    tokens scaled to the true value where it was last measured. It moves with the hidden state as
    the tail does (a tail held at a constant turns a shift of every logit, which no softmax sees,
    into a loss)."""

    sample: Shortlist
    log_scale: torch.Tensor  # (N,) true tail minus the sample's log-sum-exp, at calibration

    @classmethod
    def drawn(cls, model: nn.Module, shortlist: Shortlist, size: int, seed: int = 0) -> TailEstimate | None:
        """`size` tokens from outside `shortlist`, seeded; log_scale still to calibrate. None when
        the shortlist is the whole vocabulary (or size is 0)."""
        outside = (shortlist.position < 0).nonzero().squeeze(1)
        if len(outside) == 0 or size <= 0:
            return None
        order = torch.randperm(len(outside), generator=torch.Generator().manual_seed(seed))[:size]
        return cls(Shortlist.of(model, outside[order.to(outside.device)]), torch.zeros(0))

    def sample_lse(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """(N,) log-sum-exp of the sampled tokens' logits (differentiable)."""
        return head_reductions(model, hidden, shortlist=self.sample).lse

    def __call__(self, model: nn.Module, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) the tail's estimated log-sum-exp for `hidden`, row n calibrated as rows[n]."""
        scale = self.log_scale if rows is None else self.log_scale[rows.to(self.log_scale.device)]
        return scale.to(hidden.device) + self.sample_lse(model, hidden)
