"""The few per-row reductions of the LM head's logits that training, greedy decoding and
hard-negative scoring need, computed over vocabulary chunks so that no (rows, vocab) matrix is
ever written out.

Every training loss is a function of a row's log-sum-exp, of a few picked logits (target, old
object, watched tokens) and, for the KL term, of the reference-weighted sum of its logits. With a
262k-token vocabulary the (rows, V) fp32 logits, their log-softmax and its gradient are 31 MB
each for 30 rows; on CPU each new one is fresh pages from the OS, and filling, copying and
softmaxing them cost about as much as the body's forward (measured on Gemma-3-270M: ~25 ms a
fill, ~30 ms a log-softmax backward). Chunks of a few MB stay in cache and are reused.
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
    def forward(ctx, hidden, weight, bias, cap, pick, log_weights, weight_rows, keep_chunks):
        x = hidden.to(weight.dtype).contiguous()  # (N, H)
        rows, device = x.shape[0], x.device
        running_max = torch.full((rows,), float("-inf"), device=device)
        running_sum = torch.zeros(rows, device=device)
        top_values = torch.full((rows, 2), float("-inf"), device=device)
        top_index = torch.zeros(rows, dtype=torch.long, device=device)
        picked = torch.zeros(pick.shape, device=device)
        weighted = torch.zeros(rows if log_weights is not None else 0, device=device)
        mass = torch.zeros_like(weighted)
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
            if log_weights is not None:
                w = log_weights[weight_rows, start:start + z.shape[1]].to(device).float().exp()  # (N, C)
                weighted += (w * z).sum(-1)
                mass += w.sum(-1)
        lse = running_max + running_sum.log()
        ctx.save_for_backward(weight, lse, pick, log_weights, weight_rows)
        ctx.chunks, ctx.cap, ctx.hidden_dtype = chunks, cap, hidden.dtype
        ctx.mark_non_differentiable(mass, top_values, top_index)
        return lse, picked, weighted, mass, top_values, top_index

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
        return grad_x.to(ctx.hidden_dtype), None, None, None, None, None, None, None


def head_reductions(model: nn.Module, hidden: torch.Tensor, pick: torch.Tensor | None = None,
                    log_weights: torch.Tensor | None = None,
                    weight_rows: torch.Tensor | None = None) -> HeadReductions:
    """Reductions of the LM-head logits of `hidden` (N, H), in fp32, softcapped as the model does.

    pick: (N, K) token ids whose logits are returned (none by default). log_weights: (M, V) log-weights (a reference
    log-softmax) and weight_rows (N,) the row of each hidden state in it: `weighted` is then the
    expectation of the logits under those weights, the KL term's cross term.
    """
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    cap = getattr(model.config, "final_logit_softcapping", None)
    hidden = hidden.reshape(-1, hidden.shape[-1]).to(weight.device)
    pick = (torch.zeros((hidden.shape[0], 0), dtype=torch.long) if pick is None else pick).to(weight.device)
    if log_weights is not None and weight_rows is None:
        weight_rows = torch.arange(hidden.shape[0])
    if log_weights is not None:
        weight_rows = weight_rows.to(log_weights.device)
    keep_chunks = torch.is_grad_enabled() and hidden.requires_grad  # no backward, nothing to keep
    lse, picked, weighted, mass, top_values, top_index = _ChunkedReductions.apply(
        hidden, weight, bias, cap, pick, log_weights, weight_rows, keep_chunks)
    if log_weights is None:
        weighted = mass = None
    return HeadReductions(pick, lse, picked, weighted, mass, top_values, top_index)
