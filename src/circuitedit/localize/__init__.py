"""Localizers: rank the components that carry a fact; one file per method, holding only its
scoring, behind the protocol of `base.py`; `corruption.py` builds the prompts they score (and
their corrupted twins), `runner.py` runs a per-prompt scoring over them. Add one by adding a file
and a line here. May import `data`, `models` and `core`."""

from . import (  # noqa: F401  (registration side effect: one line per localizer)
    activation,
    all_layers,
    attribution,
    causal_tracing,
    fact_lookup,
    gradient,
    random_baseline,
)
from .base import LOCALIZERS, ComponentScore, LocalizationResult, LocalizeConfig, get_localizer
from .corruption import LocalizationError


def localize(model, tokenizer, request, config: LocalizeConfig | None = None, scan=None) -> LocalizationResult:
    """scan: a PromptScan of this model that other work on the same edit reads too (None: the
    localizer makes its own where it needs one)."""
    config = config or LocalizeConfig()
    return get_localizer(config.method)(model, tokenizer, request, config, scan=scan)


__all__ = [
    "LOCALIZERS",
    "ComponentScore",
    "LocalizationError",
    "LocalizationResult",
    "LocalizeConfig",
    "get_localizer",
    "localize",
]
