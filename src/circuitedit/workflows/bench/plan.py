"""Which (method, localizer) pairs run, and the random-localization control."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ...edit.base import uses_localization
from ...models.arch import get_adapter
from ...models.components import HEAD, MLP, Component
from .config import DEFAULT_LOCALIZER, RANDOM_LOCALIZER, BenchConfig


def random_components(model, count: int, kinds: str, seed: int) -> list[Component]:
    """`count` components drawn uniformly (seeded) from every layer: the localization control."""
    allowed = {"both": (HEAD, MLP), "heads": (HEAD,), "mlps": (MLP,)}[kinds]
    pool = [c for c in get_adapter(model).all_layer_components(model) if c.kind in allowed]
    return sorted(random.Random(seed).sample(pool, min(count, len(pool))))


def reference_localizer(config: BenchConfig) -> str:
    """The real localizer whose per-fact count the random control draws: the run's first
    localizer other than random, else the edit config's, else the default."""
    candidates = [*config.localizers, config.edit.localize.method, DEFAULT_LOCALIZER]
    return next(loc for loc in candidates if loc != RANDOM_LOCALIZER)


def label_for(method: str, localizer: str | None) -> str:
    if localizer is None or localizer == DEFAULT_LOCALIZER:
        return method
    return f"{method}+{localizer}"


def plan(methods: Sequence[str], localizers: Sequence[str]) -> list[tuple[str, str | None]]:
    """(method, localizer) pairs; methods that ignore localization run once, localizer None."""
    pairs = []
    for method in methods:
        if uses_localization(method):
            pairs += [(method, loc) for loc in localizers]
        else:
            pairs.append((method, None))
    return pairs

