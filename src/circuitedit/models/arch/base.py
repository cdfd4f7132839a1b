"""The architecture adapter: where a family keeps its heads and MLPs.

One small instance per model family maps Hugging Face module names to components, so that
localization (hooks) and editing (PEFT targets) never hard-code a family's layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from ..components import HEAD, MLP, Component


class UnsupportedArchitectureError(ValueError):
    pass


@dataclass(frozen=True)
class ArchitectureAdapter:
    family: str
    model_types: tuple[str, ...]
    layers_path: str  # dotted path to the ModuleList of decoder layers
    attn_out: str  # attention output projection, relative to a layer; its input is the heads' concat
    mlp_out: str  # MLP output (down) projection, relative to a layer
    attn_in: tuple[str, ...]  # q/k/v projections (one fused module for phi3/gpt2)
    mlp_in: tuple[str, ...]  # up/gate projections (one fused module for phi3)
    heads_attr: str = "num_attention_heads"
    # Linear weights stored (in, out), as transformers' Conv1D (GPT-2) does: PEFT's fan_in_fan_out.
    weights_transposed: bool = False
    # A norm the MLP output passes before it joins the residual (Gemma-3's post-feedforward norm),
    # relative to a layer; None where the down projection's output is added as it is.
    mlp_out_norm: str | None = None

    # ---- names -------------------------------------------------------------------------
    def layer_name(self, layer: int) -> str:
        return f"{self.layers_path}.{layer}"

    def attn_out_name(self, layer: int) -> str:
        return f"{self.layer_name(layer)}.{self.attn_out}"

    def mlp_out_name(self, layer: int) -> str:
        return f"{self.layer_name(layer)}.{self.mlp_out}"

    def mlp_out_norm_name(self, layer: int) -> str | None:
        return None if self.mlp_out_norm is None else f"{self.layer_name(layer)}.{self.mlp_out_norm}"

    def module_name(self, component: Component) -> str:
        """The module whose input (heads) or output (MLP) carries this component."""
        if component.kind == HEAD:
            return self.attn_out_name(component.layer)
        return self.mlp_out_name(component.layer)

    # ---- shapes ------------------------------------------------------------------------
    def num_layers(self, model: nn.Module) -> int:
        return len(model.get_submodule(self.layers_path))

    def num_heads(self, model: nn.Module) -> int:
        return int(getattr(model.config, self.heads_attr))

    def head_dim(self, model: nn.Module) -> int:
        """Width of one head's slice of the attention output projection's input."""
        return in_features(model.get_submodule(self.attn_out_name(0))) // self.num_heads(model)

    def head_slice(self, model: nn.Module, head: int) -> slice:
        width = self.head_dim(model)
        return slice(head * width, (head + 1) * width)

    # ---- PEFT targets ------------------------------------------------------------------
    def ia3_targets(
        self, components: Iterable[Component], mlp_scaling: str = "hidden"
    ) -> tuple[list[str], list[str]]:
        """IA3 `target_modules` and `feedforward_modules` for a set of components.

        Heads: the attention output projection as a feed-forward module, so IA3 scales its
        input, i.e. the concatenated head outputs (other heads' slices are masked in training).
        MLPs: the down projection, scaling its input (`hidden`, IA3's l_ff) or output (`output`).
        """
        targets: list[str] = []
        feedforward: list[str] = []
        for comp in sorted(set(components)):
            name = self.module_name(comp)
            if name in targets:
                continue
            targets.append(name)
            if comp.kind == HEAD or mlp_scaling == "hidden":
                feedforward.append(name)
        return targets, feedforward

    def weight_targets(self, components: Iterable[Component]) -> list[str]:
        """Module names whose full weights a localized fine-tune / LoRA may change."""
        names: list[str] = []
        for comp in sorted(set(components)):
            layer = self.layer_name(comp.layer)
            group: Sequence[str] = (
                (self.attn_out,) if comp.kind == HEAD else (*self.mlp_in, self.mlp_out)
            )
            for rel in group:
                full = f"{layer}.{rel}"
                if full not in names:
                    names.append(full)
        return names

    def all_layer_components(self, model: nn.Module) -> list[Component]:
        """One MLP and every head of every layer: the 'no localization' target set."""
        comps: list[Component] = []
        for layer in range(self.num_layers(model)):
            comps.extend(Component(layer, HEAD, h) for h in range(self.num_heads(model)))
            comps.append(Component(layer, MLP))
        return comps


def in_features(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    if hasattr(module, "nx"):  # transformers' Conv1D (GPT-2) stores weight as (in, out)
        return int(module.nx)
    raise UnsupportedArchitectureError(f"cannot read input width of {type(module).__name__}")
