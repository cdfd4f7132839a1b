"""The editor protocol, shared training context, adapter artifacts and the registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from ..data.requests import EditRequest
from ..models.components import Component
from .training.loop import StageConfig, StageLog
from .training.retain import RetainSet


@dataclass
class EditorConfig:
    unlearn: StageConfig = field(default_factory=lambda: StageConfig(margin=1.0))
    # A larger learn margin generalises to more held-out paraphrases, at more steps. On 8 dev
    # edits (docs/tuning.md): margin 2 / 4 / 5 / 6 gives paraphrase accuracy 0.50 / 0.66 / 0.69 / 0.75,
    # 25 / 30 / 35 / 45 steps; 6 also loses neighbourhood accuracy (0.78 -> 0.70).
    learn: StageConfig = field(default_factory=lambda: StageConfig(margin=5.0))
    uncertainty: str = "I am not sure."  # may use {subject}, e.g. "I am not sure where {subject} is."
    mlp_scaling: str = "hidden"  # IA3 on the MLP's hidden units ("hidden") or its output ("output")
    merge_learned: bool = True  # merge the stage-2 adapter too (False keeps it as an adapter)
    n_prefixes: int = 5  # model-generated context prefixes added to the training prompts
    n_template_neighbours: int = 8  # other subjects in the edit template, kept by the KL term
    # Made-up siblings of the subject ("Ferrari Tower" for "Ferrari Mondial") also kept by the KL
    # term. Off by default: on 8 dev edits they cost 30% more steps and one forget failure
    # without lifting neighbourhood accuracy (docs/tuning.md).
    n_sibling_neighbours: int = 0
    # Learning rates of the weight-training baselines (the stage configs' lr is an IA3 rate):
    # Adam on full weights (ft-full, ft-localized) and on LoRA factors (lora-localized).
    ft_lr: float = 2e-5
    lora_lr: float = 1e-3
    seed: int = 0


@dataclass
class TrainingContext:
    """What every editor trains on, built once per edit so all methods share it."""

    prompts: list[str]  # rendered training prompts (cloze, plus chat-form for chat models)
    retain: RetainSet | None
    old_token: int  # first token of the old object, suppressed in training
    # per prompt, its leading text (a generated prefix, else ""), run once per stage: StageConfig.frozen_context
    contexts: list[str] | None = None


@dataclass
class AdapterArtifact:
    """A trained PEFT adapter in memory, writable in PEFT's own format."""

    name: str
    peft_config: object
    state: dict[str, torch.Tensor]

    @classmethod
    def capture(cls, name: str, peft_model: PeftModel) -> AdapterArtifact:
        state = {k: v.detach().cpu().clone().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
        return cls(name, peft_model.peft_config["default"], state)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.peft_config.save_pretrained(str(directory))
        save_file(self.state, str(directory / "adapter_model.safetensors"))
        (directory / "stage.json").write_text(json.dumps({"name": self.name}))


@dataclass
class EditOutcome:
    model: nn.Module
    stages: list[StageLog]
    adapters: list[AdapterArtifact] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)


Editor = Callable[[nn.Module, object, EditRequest, Sequence[Component], TrainingContext, EditorConfig], EditOutcome]

EDITORS: dict[str, Editor] = {}


def register(name: str):
    def wrap(fn):
        fn.name = name
        EDITORS[name] = fn
        return fn

    return wrap


def get_editor(name: str) -> Editor:
    if name not in EDITORS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(EDITORS))}")
    return EDITORS[name]


def uses_localization(method: str) -> bool:
    """Whether the editor trains the localized components (baselines such as ft-full do not)."""
    return getattr(get_editor(method), "uses_localization", True)


def freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
