"""Editors and baselines. Add one by adding a file and a line here."""

from . import unlearn_then_learn  # noqa: F401  (registration side effect)
from .base import EDITORS, AdapterArtifact, EditorConfig, EditOutcome, TrainingContext, get_editor
from .training import RetainSet, StageConfig, StageLog

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
