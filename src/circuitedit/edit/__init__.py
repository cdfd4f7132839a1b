"""Editors and baselines, one file per method behind the protocol of `base.py`; `training/` holds
the machinery they share. Add one by adding a file and a line here. May import `data`, `models`
and `core`."""

from . import (  # noqa: F401  (registration side effect: one line per editor)
    alphaedit,
    ft_full,
    ft_localized,
    ia3_all_layers,
    learn_only,
    lora_localized,
    memit,
    none,
    rome,
    rome_unlearn_then_learn,
    unlearn_then_learn,
)
from .base import EDITORS, AdapterArtifact, EditorConfig, EditOutcome, TrainingContext, get_editor
from .training.loop import StageConfig, StageLog
from .training.retain import RetainSet

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
