"""Registry of architecture adapters, keyed by `config.model_type`."""

from __future__ import annotations

from torch import nn

from . import gemma3_text, gpt2, llama, phi3, qwen2
from .base import ArchitectureAdapter, UnsupportedArchitectureError

ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    gemma3_text.ADAPTER,
    llama.ADAPTER,
    qwen2.ADAPTER,
    phi3.ADAPTER,
    gpt2.ADAPTER,
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for_model_type(model_type: str) -> ArchitectureAdapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r}; supported: {', '.join(supported_model_types())}"
    )


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    return adapter_for_model_type(getattr(model.config, "model_type", type(model).__name__))


__all__ = [
    "ADAPTERS",
    "ArchitectureAdapter",
    "UnsupportedArchitectureError",
    "adapter_for_model_type",
    "get_adapter",
    "supported_model_types",
]
