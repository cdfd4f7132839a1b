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


@dataclass
class WeightDelta:
    """{parameter name: tensor to add}, in each parameter's own stored layout."""

    name: str
    tensors: dict[str, torch.Tensor]
    details: dict = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors, str(directory / DELTA_FILE))
        (directory / META_FILE).write_text(json.dumps({"name": self.name, **self.details}) + "\n")

    @classmethod
    def load(cls, directory: Path) -> WeightDelta:
        meta = json.loads((Path(directory) / META_FILE).read_text(encoding="utf-8"))
        return cls(meta.pop("name"), load_file(str(Path(directory) / DELTA_FILE)), meta)

    def apply(self, model: nn.Module, sign: float = 1.0) -> nn.Module:
        """Add (sign -1: subtract) the delta to `model`'s parameters in fp32, cast back once."""
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                weight = model.get_parameter(name)
                weight.copy_((weight.float() + sign * tensor.to(weight.device).float()).to(weight.dtype))
        return model


def is_delta_dir(directory: Path) -> bool:
    return (Path(directory) / DELTA_FILE).exists()
