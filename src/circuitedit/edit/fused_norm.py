"""Gemma's RMSNorm as one autograd node while a stage trains.

Gemma normalizes in fp32 and scales by (1 + weight) before casting back: ten small autograd ops
a norm, six norms a layer, and their backward as many again. On Gemma-3-270M (2 CPU cores,
bf16) the norms were ~16% of a training forward+backward; one node with a hand-written backward
takes ~5% off a training step. The forward is the same ops in the same order (the same bits);
the backward is the analytic gradient, equal up to fp32 rounding. Norms whose weight trains (a
full fine-tune) keep the model's own forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _GemmaRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        inverse_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        normed = x32 * inverse_rms
        ctx.save_for_backward(normed, inverse_rms, scale)
        return (normed * scale).type_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, inverse_rms, scale = ctx.saved_tensors
        scaled = grad.float() * scale
        grad_x = inverse_rms * (scaled - normed * (scaled * normed).mean(-1, keepdim=True))
        return grad_x.to(grad.dtype), None, None


def _fused_forward(norm: nn.Module):
    native = norm.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if norm.weight.requires_grad or not (torch.is_grad_enabled() and x.requires_grad):
            return native(x)
        return _GemmaRMSNorm.apply(x, 1.0 + norm.weight.float(), norm.eps)

    return forward


def is_gemma_norm(module: nn.Module) -> bool:
    """Gemma's RMSNorm (Gemma3RMSNorm, Gemma2RMSNorm, ...): the only kind this fuses."""
    name = type(module).__name__
    return name.startswith("Gemma") and name.endswith("RMSNorm") and hasattr(module, "eps")


@contextmanager
def fused_gemma_norms(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Run the block with every Gemma RMSNorm of `model` as one autograd node (a no-op for
    other models or with `enabled` False); the modules are restored afterwards."""
    norms = [m for m in model.modules() if is_gemma_norm(m)] if enabled else []
    previous = [norm.__dict__.get("forward") for norm in norms]  # an instance's own forward, if any
    for norm in norms:
        norm.forward = _fused_forward(norm)
    try:
        yield
    finally:
        for norm, before in zip(norms, previous, strict=True):
            if before is None:
                del norm.forward  # the class's forward shows through again
            else:
                norm.forward = before
