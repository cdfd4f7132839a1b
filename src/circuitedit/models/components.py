"""Components: the units that localization ranks and editing trains.

A component is an attention head (a slice of the attention output projection's input) or a
whole MLP block (its output projection). Scores are attached per position group ("subject":
the subject's tokens, "last": the final prompt token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEAD = "head"
MLP = "mlp"
KINDS = (HEAD, MLP)
POSITION_GROUPS = ("subject", "last")

_NAME_RE = re.compile(r"^L(\d+)\.(?:H(\d+)|MLP)$")


@dataclass(frozen=True, order=True)
class Component:
    layer: int
    kind: str
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"component kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == HEAD) != (self.head is not None):
            raise ValueError("a head component needs a head index; an MLP component must not have one")

    @property
    def name(self) -> str:
        return f"L{self.layer}.H{self.head}" if self.kind == HEAD else f"L{self.layer}.MLP"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> Component:
        match = _NAME_RE.match(name.strip())
        if not match:
            raise ValueError(f"cannot parse component {name!r}: expected 'L<layer>.H<head>' or 'L<layer>.MLP'")
        layer, head = match.groups()
        if head is None:
            return cls(int(layer), MLP)
        return cls(int(layer), HEAD, int(head))


def all_components(num_layers: int, num_heads: int) -> list[Component]:
    comps: list[Component] = []
    for layer in range(num_layers):
        comps.extend(Component(layer, HEAD, h) for h in range(num_heads))
        comps.append(Component(layer, MLP))
    return comps
