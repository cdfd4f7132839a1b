"""Settings of the key-value editors (ROME; MEMIT and AlphaEdit share them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import CheckedConfig, FieldChecks


@dataclass
class KeyedConfig(CheckedConfig):
    """How a key-value editor finds its value and keys its update; checked at construction."""

    layer: int | None = field(default=None, metadata={
        "help": "the MLP layer to edit, the last of memit's and alphaedit's (default: the top-ranked MLP of the "
                "localization)"})
    # MEMIT's critical layers end where the subject's causal effect through the MLPs peaks (the
    # MEMIT paper's GPT-2 XL range 13-17 ends at ROME's layer 17): `span` layers ending at `layer`.
    layers: list[int] | None = field(default=None, metadata={
        "help": "memit, alphaedit: the MLP layers to spread the edit over (default: span layers ending at layer)"})
    span: int = field(default=3, metadata={
        "help": "memit, alphaedit: how many consecutive MLP layers, ending at layer, the edit is spread over"})
    value_steps: int = field(default=25, metadata={"help": "Adam steps of the value search"})
    value_lr: float = field(default=0.5, metadata={"help": "learning rate of the value search"})
    value_tolerance: float = field(default=0.05, metadata={
        "help": "the value search stops once the new object's mean NLL is below this"})
    kl_weight: float = field(default=0.0625, metadata={
        "help": "weight of the KL term keeping what the model says of the subject itself"})
    weight_decay: float = field(default=0.5, metadata={"help": "weight of the value shift's norm penalty"})
    clamp_norm: float = field(default=4.0, metadata={
        "help": "the value shift's norm is bounded by this times the original output's"})
    residual_clamp: float = field(default=0.75, metadata={
        "help": "memit, alphaedit: the target residual's shift is bounded by this times the residual's norm"})
    # MEMIT's λ counts the preserved keys C stands for against each new key; the paper's values
    # (15000 on GPT-J, 20000 on GPT-2 XL) are about 1-3 times the key width, so it is set in
    # those units and carries over to other model sizes: a key as typical as C's moves about
    # half-way to its value (Sherman-Morrison: ΔW k = r·m/(1+m), m = kᵀ(λC)⁻¹k ≈ d_k/λ).
    covariance_weight: float = field(default=1.0, metadata={
        "help": "memit: λ of ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, in units of the key width d_k"})
    nullspace_threshold: float = field(default=1e-2, metadata={
        "help": "alphaedit: C's eigenvectors with eigenvalues below this fraction of the largest span the "
                "null space the update is projected onto"})
    nullspace_ridge: float = field(default=1.0, metadata={
        "help": "alphaedit: α of ΔW = R Kᵀ P (K Kᵀ P + αI)⁻¹, relative to C's mean diagonal"})
    ridge: float = field(default=1e-3, metadata={
        "help": "ridge added to the key covariance, relative to its mean diagonal"})
    covariance_tokens: int = field(default=20_000, metadata={
        "help": "tokens of model-sampled text the key covariance is computed from"})
    cache_covariance: bool = field(default=True, metadata={
        "help": "keep the key covariance on disk, per model fingerprint, layer and corpus"})

    def validate(self, section: str = "editor.keyed") -> None:
        check = FieldChecks(self, section)
        check.integer("layer", 0, optional=True)
        if self.layers is not None and not (
                isinstance(self.layers, list) and self.layers
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.layers)):
            check.fail("layers", f"expected null or a non-empty list of layer indices, got {self.layers!r}")
        check.integer("span", 1)
        check.number("nullspace_threshold", 0, 1, low_open=True)
        check.integer("value_steps", 1)
        check.integer("covariance_tokens", 1)
        for name in ("value_lr", "clamp_norm", "residual_clamp", "covariance_weight", "nullspace_ridge"):
            check.number(name, 0, low_open=True)
        for name in ("value_tolerance", "kl_weight", "weight_decay", "ridge"):
            check.number(name, 0)
        check.flag("cache_covariance")
