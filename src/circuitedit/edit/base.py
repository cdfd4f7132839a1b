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

from ..core.config import CheckedConfig, FieldChecks
from ..data.requests import EditRequest
from ..models.components import Component
from .keyed import KeyedConfig
from .training.loop import StageConfig, StageLog
from .training.retain import RetainSet


@dataclass
class EditorConfig(CheckedConfig):
    """What the editors train and how; `validate` runs at construction."""

    unlearn: StageConfig = field(default_factory=lambda: StageConfig(margin=1.0), metadata={"help": "the unlearn stage (stage 1: answer with the uncertainty text)"})
    # A larger learn margin generalises to more held-out paraphrases, at more steps; too large a
    # one drags neighbours along (evidence: docs/tuning.md).
    learn: StageConfig = field(default_factory=lambda: StageConfig(margin=5.0), metadata={"help": "the learn stage (stage 2: answer with the new object)"})
    uncertainty: str = field(default="I am not sure.", metadata={"help": "what the unlearn stage trains the model to answer; may use {subject}"})
    mlp_scaling: str = field(default="hidden", metadata={"help": "IA3 on the MLP's hidden units (hidden) or its output (output)"})
    merge_learned: bool = field(default=True, metadata={"help": "merge the stage-2 adapter too (false keeps it as an adapter)"})
    n_prefixes: int = field(default=5, metadata={"help": "model-generated context prefixes added to the training prompts"})
    n_template_neighbours: int = field(default=8, metadata={"help": "other subjects in the edit template, kept by the KL term"})
    # Made-up siblings of the subject ("Ferrari Tower" for "Ferrari Mondial") also kept by the KL
    # term. Off by default: they cost steps and forgetting without sparing neighbours (evidence:
    # docs/tuning.md).
    n_sibling_neighbours: int = field(default=0, metadata={"help": "made-up siblings of the subject, kept by the KL term"})
    # Learning rates of the weight-training baselines (the stage configs' lr is an IA3 rate):
    # Adam on full weights (ft-full, ft-localized) and on LoRA factors (lora-localized).
    ft_lr: float = field(default=2e-5, metadata={"help": "Adam learning rate of ft-full and ft-localized (full weights)"})
    lora_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of lora-localized (LoRA factors)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampled prefixes and of training"})
    keyed: KeyedConfig = field(default_factory=KeyedConfig, metadata={
        "help": "the key-value editors (rome, memit, alphaedit): layers, value search, key covariance"})

    def validate(self, section: str = "editor") -> None:
        """Raise a ValueError naming the first field (as `section.field`, a stage's as
        `section.unlearn.field`) whose value cannot train."""
        check = FieldChecks(self, section)
        for stage in ("unlearn", "learn"):
            if not isinstance(getattr(self, stage), StageConfig):
                check.fail(stage, f"expected a StageConfig, got {type(getattr(self, stage)).__name__}")
            getattr(self, stage).validate(f"{section}.{stage}")
        if not isinstance(self.keyed, KeyedConfig):
            check.fail("keyed", f"expected a KeyedConfig, got {type(self.keyed).__name__}")
        self.keyed.validate(f"{section}.keyed")
        check.text("uncertainty")
        try:
            self.uncertainty.format(subject="")
        except (KeyError, IndexError, ValueError) as exc:
            check.fail("uncertainty", f"may use {{subject}} and nothing else in braces, got {self.uncertainty!r} ({exc})")
        check.choice("mlp_scaling", ("hidden", "output"))
        check.flag("merge_learned")
        for name in ("n_prefixes", "n_template_neighbours", "n_sibling_neighbours"):
            check.integer(name, 0)
        for name in ("ft_lr", "lora_lr"):
            check.number(name, 0, low_open=True)
        check.integer("seed")


@dataclass
class KeyMemory:
    """What a key-value edit made in a sequence keys on: the unedited model's key statistics
    (computed once, not per edited model), and per layer K_p K_pᵀ (d_k, d_k) of the keys the
    earlier edits were solved for (AlphaEdit keeps their outputs; MEMIT does not use them)."""

    model: nn.Module
    previous: dict[int, torch.Tensor] | None = None


@dataclass
class TrainingContext:
    """What every editor trains on, built once per edit so all methods share it."""

    prompts: list[str]  # rendered training prompts (cloze, plus chat-form for chat models)
    retain: RetainSet | None
    old_token: int | list[int]  # first token of the old object (per prompt for many facts), suppressed in training
    # per prompt, its leading text (a generated prefix, else ""), run once per stage: StageConfig.frozen_context
    contexts: list[str] | None = None
    owners: list[int] | None = None  # per prompt, its request's index (many facts trained together)
    retain_prompts: list[str] | None = None  # the request's own retain prompts (its template neighbours)
    memory: KeyMemory | None = None  # in a sequence of edits: what the key-value editors key on

    def key_source(self, model: nn.Module) -> nn.Module:
        """The model whose key statistics a key-value editor uses: `model`, or in a sequence the unedited one."""
        return self.memory.model if self.memory is not None else model

    @property
    def previous_keys(self) -> dict[int, torch.Tensor] | None:
        return self.memory.previous if self.memory is not None else None

    @classmethod
    def joined(cls, contexts: Sequence[TrainingContext], retain: RetainSet | None) -> TrainingContext:
        """One context training every request's prompts together, each prompt with its request's
        old token, holding `retain` (built by the caller over all the requests' neighbours)."""
        prompts, old, leading, owners = [], [], [], []
        for index, context in enumerate(contexts):
            prompts += context.prompts
            old += [context.old_token] * len(context.prompts)
            leading += context.contexts or [""] * len(context.prompts)
            owners += [index] * len(context.prompts)
        return cls(prompts, retain, old, leading, owners)

    def by_request(self, count: int) -> list[list[str]]:
        """The prompts of each of `count` requests (all of them for one request)."""
        owners = self.owners or [0] * len(self.prompts)
        return [[p for p, o in zip(self.prompts, owners, strict=True) if o == i] for i in range(count)]

    def per_prompt(self, requests: Sequence[EditRequest], text: Callable[[EditRequest], str]) -> list[str]:
        """`text(request)` for each prompt's request (one request when `owners` is None)."""
        owners = self.owners or [0] * len(self.prompts)
        return [text(requests[owner]) for owner in owners]


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

# (model, tokenizer, requests, components per request, their joined context, config) -> one outcome
BatchEditor = Callable[[nn.Module, object, Sequence[EditRequest], Sequence[Sequence[Component]],
                        TrainingContext, EditorConfig], EditOutcome]

EDITORS: dict[str, Editor] = {}
BATCH_EDITORS: dict[str, BatchEditor] = {}  # editors that write many facts in one update


def register(name: str):
    def wrap(fn):
        fn.name = name
        EDITORS[name] = fn
        return fn

    return wrap


def register_batch(name: str):
    """Register `name`'s many-facts-at-once form (`edit --together`)."""
    def wrap(fn):
        fn.name = name
        BATCH_EDITORS[name] = fn
        return fn

    return wrap


def get_editor(name: str) -> Editor:
    if name not in EDITORS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(EDITORS))}")
    return EDITORS[name]


def get_batch_editor(name: str) -> BatchEditor:
    get_editor(name)
    if name not in BATCH_EDITORS:
        raise ValueError(f"method {name!r} edits one fact at a time; --together needs one of: "
                         f"{', '.join(sorted(BATCH_EDITORS))}")
    return BATCH_EDITORS[name]


def union(components: Sequence[Sequence[Component]]) -> list[Component]:
    """Every component any of the lists holds, in first-seen order."""
    return list(dict.fromkeys(c for group in components for c in group))


def uses_retain(method: str) -> bool:
    """Whether the editor trains against the retain set (the key-value editors keep the model's
    other answers through the key covariance instead)."""
    return getattr(get_editor(method), "uses_retain", True)


def uses_localization(method: str) -> bool:
    """Whether the editor trains the localized components (baselines such as ft-full do not)."""
    return getattr(get_editor(method), "uses_localization", True)


def freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
