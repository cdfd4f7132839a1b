"""Gemma's RMSNorm fused into one autograd node: the model's outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from circuitedit.edit.fused_norm import fused_gemma_norms, is_gemma_norm
from tiny import tiny_model


def forward_and_gradient(model, ids, scale):
    hidden = model.get_input_embeddings()(ids) * scale  # a leaf upstream of every norm
    out = model(inputs_embeds=hidden).logits.float()
    (grad,) = torch.autograd.grad(out.pow(2).mean(), scale)
    return out.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norms_give_the_same_outputs_and_gradients(dtype):
    model, _ = tiny_model("gemma3_text")
    model.to(dtype)
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.no_grad():  # norm weights away from zero, so the (1 + w) scale matters
        for norm in filter(is_gemma_norm, model.modules()):
            norm.weight.normal_(0, 0.5)
    ids = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    scale = torch.ones(model.config.hidden_size, dtype=dtype, requires_grad=True)
    native = forward_and_gradient(model, ids, scale)
    with fused_gemma_norms(model):
        fused = forward_and_gradient(model, ids, scale)
    assert torch.equal(fused[0], native[0])  # the same forward ops in the same order
    tolerance = {"rtol": 1e-4, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0.05, "atol": 1e-3}
    torch.testing.assert_close(fused[1], native[1], **tolerance)
    assert all("forward" not in norm.__dict__ for norm in model.modules())  # restored


def test_trained_norm_weights_and_other_families_keep_their_forward():
    model, _ = tiny_model("gemma3_text")
    norm = next(filter(is_gemma_norm, model.modules()))
    x = torch.randn(2, norm.weight.shape[0], requires_grad=True)
    with fused_gemma_norms(model):
        norm(x).sum().backward()  # the weight trains: the model's own forward gives its gradient
    assert norm.weight.grad is not None
    llama, _ = tiny_model("llama")
    assert not any(is_gemma_norm(m) for m in llama.modules())
    with fused_gemma_norms(llama), fused_gemma_norms(model, enabled=False):
        assert all("forward" not in m.__dict__ for m in [*llama.modules(), *model.modules()])
