"""`focus_slack`: the target loss counts only the tokens still short of the stopping margin."""

from __future__ import annotations

import pytest
import torch

from circuitedit.core.head import HeadReductions
from circuitedit.edit.training.loop import StageConfig, target_loss


def head_of(logits: torch.Tensor, targets: torch.Tensor) -> HeadReductions:
    top = logits.topk(2, dim=-1)
    return HeadReductions(pick=targets[:, None], lse=logits.logsumexp(-1), picked=logits.gather(1, targets[:, None]),
                          weighted=None, weight_mass=None, top_values=top.values.detach(),
                          top_index=top.indices[:, 0], top_tokens=top.indices[:, :0])


def test_focused_loss_gives_no_gradient_to_tokens_already_at_the_margin():
    # row 0: the target leads by 6 logits (reached); row 1: it trails by 1
    logits = torch.tensor([[8.0, 2.0, 0.0], [1.0, 2.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 0])
    target_loss(head_of(logits, targets), StageConfig(margin=2.0, focus_slack=1.0)).backward()
    assert torch.count_nonzero(logits.grad[0]) == 0 and torch.count_nonzero(logits.grad[1]) == 3
    expected = torch.nn.functional.cross_entropy(logits[1:].detach(), targets[1:])
    loss = target_loss(head_of(logits, targets), StageConfig(margin=2.0, focus_slack=1.0)).detach()
    assert float(loss) == pytest.approx(float(expected))


def test_unfocused_loss_is_the_mean_cross_entropy_and_a_negative_slack_is_refused():
    logits = torch.tensor([[8.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    targets = torch.tensor([0, 0])
    expected = torch.nn.functional.cross_entropy(logits, targets)
    assert float(target_loss(head_of(logits, targets), StageConfig())) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match=r"^stage\.focus_slack: must be null or at least 0"):
        StageConfig(focus_slack=-1.0)
