"""Editors and baselines. Add one by adding a file and a line here."""

from . import (
    ft_full,  # noqa: F401
    ft_localized,  # noqa: F401
    ia3_all_layers,  # noqa: F401
    learn_only,  # noqa: F401
    lora_localized,  # noqa: F401
    none,  # noqa: F401
    unlearn_then_learn,  # noqa: F401  (registration side effect)
)
from .base import EDITORS, AdapterArtifact, EditorConfig, EditOutcome, TrainingContext, get_editor
from .retain import RetainSet
from .training import StageConfig, StageLog

__all__ = [
    "EDITORS",
    "AdapterArtifact",
    "EditOutcome",
    "EditorConfig",
    "RetainSet",
    "StageConfig",
    "StageLog",
    "TrainingContext",
    "get_editor",
]
