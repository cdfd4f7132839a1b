"""Weight deltas: what a key-value editor (ROME, MEMIT, AlphaEdit) adds to a few weight
matrices, saved as safetensors (small: one matrix per edited layer, not a whole model)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

DELTA_FILE = "delta.safetensors"
META_FILE = "delta.json"
KEYS_FILE = "keys.safetensors"  # the keys a delta was solved for, per layer (AlphaEdit protects them later)


@dataclass
class WeightDelta:
    """{parameter name: tensor to add}, in each parameter's own stored layout."""

    name: str
    tensors: dict[str, torch.Tensor]
    details: dict = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> K (d_k, n) of the edited facts

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors, str(directory / DELTA_FILE))
        if self.keys:
            save_file({str(layer): k.contiguous().cpu() for layer, k in self.keys.items()}, str(directory / KEYS_FILE))
        (directory / META_FILE).write_text(json.dumps({"name": self.name, **self.details}) + "\n")

    @classmethod
    def load(cls, directory: Path) -> WeightDelta:
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
        keys = load_file(str(directory / KEYS_FILE)) if (directory / KEYS_FILE).exists() else {}
        return cls(meta.pop("name"), load_file(str(directory / DELTA_FILE)), meta,
                   {int(layer): k for layer, k in keys.items()})

    def apply(self, model: nn.Module, sign: float = 1.0) -> nn.Module:
        """Add (sign -1: subtract) the delta to `model`'s parameters in fp32, cast back once."""
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                weight = model.get_parameter(name)
                weight.copy_((weight.float() + sign * tensor.to(weight.device).float()).to(weight.dtype))
        return model


def is_delta_dir(directory: Path) -> bool:
    return (Path(directory) / DELTA_FILE).exists()
