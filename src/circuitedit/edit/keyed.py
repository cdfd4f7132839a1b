"""Settings of the key-value editors (ROME; MEMIT and AlphaEdit share them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import CheckedConfig, FieldChecks


@dataclass
class KeyedConfig(CheckedConfig):
    """How a key-value editor finds its value and keys its update; checked at construction."""

    layer: int | None = field(default=None, metadata={
        "help": "the MLP layer to edit (default: the top-ranked MLP of the localization)"})
    value_steps: int = field(default=25, metadata={"help": "Adam steps of the value search"})
    value_lr: float = field(default=0.5, metadata={"help": "learning rate of the value search"})
    value_tolerance: float = field(default=0.05, metadata={
        "help": "the value search stops once the new object's mean NLL is below this"})
    kl_weight: float = field(default=0.0625, metadata={
        "help": "weight of the KL term keeping what the model says of the subject itself"})
    weight_decay: float = field(default=0.5, metadata={"help": "weight of the value shift's norm penalty"})
    clamp_norm: float = field(default=4.0, metadata={
        "help": "the value shift's norm is bounded by this times the original output's"})
    ridge: float = field(default=1e-3, metadata={
        "help": "ridge added to the key covariance, relative to its mean diagonal"})
    covariance_tokens: int = field(default=20_000, metadata={
        "help": "tokens of model-sampled text the key covariance is computed from"})
    cache_covariance: bool = field(default=True, metadata={
        "help": "keep the key covariance on disk, per model fingerprint, layer and corpus"})

    def validate(self, section: str = "editor.keyed") -> None:
        check = FieldChecks(self, section)
        check.integer("layer", 0, optional=True)
        check.integer("value_steps", 1)
        check.integer("covariance_tokens", 1)
        for name in ("value_lr", "clamp_norm"):
            check.number(name, 0, low_open=True)
        for name in ("value_tolerance", "kl_weight", "weight_decay", "ridge"):
            check.number(name, 0)
        check.flag("cache_covariance")
