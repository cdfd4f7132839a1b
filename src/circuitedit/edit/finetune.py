"""Shared helpers of the fine-tuning baselines (ft-full, ft-localized, lora-localized)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .base import EditorConfig
from .training.loop import StageConfig


def ft_stage_config(config: EditorConfig, lr: float) -> StageConfig:
    """The learn stage's config (margin, steps, loss weights) with a weight-training learning
    rate (EditorConfig.ft_lr or .lora_lr; the stage's own lr is an IA3 rate)."""
    return replace(config.learn, lr=lr)


def ensure_fp32(model: nn.Module) -> nn.Module:
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    return model


def unique_parameters(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
