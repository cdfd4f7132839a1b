"""Models: loading (the embedded default, Hugging Face ids, local paths), components, one small
adapter per architecture family (`arch/`), and hooks on their sites. May import `core`."""

from .arch import ArchitectureAdapter, UnsupportedArchitectureError, get_adapter
from .components import HEAD, MLP, Component
from .loading import LoadedModel, ModelLoadError, load_model

__all__ = [
    "HEAD",
    "MLP",
    "ArchitectureAdapter",
    "Component",
    "LoadedModel",
    "ModelLoadError",
    "UnsupportedArchitectureError",
    "get_adapter",
    "load_model",
]
