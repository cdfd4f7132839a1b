"""The localizer protocol, its result type, selection policies and the registry."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..core.config import CheckedConfig, FieldChecks
from ..models.components import HEAD, MLP, Component


@dataclass
class LocalizeConfig(CheckedConfig):
    """How components are scored and which are selected; `validate` runs at construction."""

    method: str = field(default="attribution", metadata={"help": "the localizer that scores the components"})
    top_k: int = field(default=8, metadata={"help": "number of components selected: those the edit trains"})
    # The edit trains MLPs ranked by their effect at the subject's tokens (fact lookup, Guo et al.
    # 2024): an IA3 vector on an MLP's hidden units only acts where those units fire, so it can
    # be specific to a subject, while a scaled head output moves every prompt that head reads, so
    # MLPs at the subject spare more controls and neighbours than "both"/"all" (evidence:
    # docs/tuning.md). Heads and last-token effects stay selectable.
    kinds: str = field(default="mlps", metadata={"help": "which components are ranked and selected: heads, mlps or both"})
    positions: str = field(default="subject", metadata={"help": "rank components by their effect at the subject tokens, the last token, or all"})
    max_layer_fraction: float = field(default=1.0, metadata={"help": "select only components in the first this-share of layers, in (0, 1]"})
    fraction: float | None = field(default=None, metadata={"help": "instead of top_k: the smallest set carrying this share of the total |effect|, in (0, 1]"})
    noise_scale: float = field(default=3.0, metadata={"help": "subject-embedding noise in embedding std units (the fallback corruption)"})
    use_paraphrases: bool = field(default=True, metadata={"help": "aggregate the scores over the edit prompt and its paraphrases"})
    seed: int = field(default=0, metadata={"help": "seed of the random draws of localization (noise, the random localizer)"})

    def max_layer(self, num_layers: int) -> int:
        """The highest layer a component may sit in to be selected."""
        return int(self.max_layer_fraction * num_layers) - 1

    def validate(self, section: str = "localize") -> None:
        """Raise a ValueError naming the first field (as `section.field`) whose value cannot
        select components (the localizer's name is checked against the registry by EditConfig)."""
        check = FieldChecks(self, section)
        check.text("method")
        check.integer("top_k", 1)
        check.choice("kinds", ("heads", "mlps", "both"))
        check.choice("positions", ("subject", "last", "all"))
        check.number("max_layer_fraction", 0, 1, low_open=True)
        check.number("fraction", 0, 1, low_open=True, optional=True)
        check.number("noise_scale", 0)
        check.flag("use_paraphrases")
        check.integer("seed")


@dataclass
class ComponentScore:
    component: Component
    position: str  # "subject" or "last"
    score: float

    def counts_for(self, positions: str) -> bool:
        """Whether this score counts when ranking by `positions` ("all" counts every group); a
        score at position "all" (random, all-layers) belongs to no group: it always counts."""
        return positions in ("all", self.position) or self.position == "all"

    def to_dict(self) -> dict:
        return {"component": self.component.name, "layer": self.component.layer,
                "kind": self.component.kind, "head": self.component.head,
                "position": self.position, "score": self.score}


@dataclass
class LocalizationResult:
    method: str
    scores: list[ComponentScore]
    passes: int = 0  # forward + backward passes spent
    seconds: float = 0.0
    corruption: str = ""
    details: dict = field(default_factory=dict)
    # True for "no localization" results (all-layers): select() then returns every component of
    # the requested kinds, whatever top_k / fraction say.
    selects_all: bool = False

    def component_scores(self, positions: str = "all") -> dict[Component, float]:
        """One number per component: the largest |score| over its position groups
        (or only over `positions`, e.g. "subject")."""
        agg: dict[Component, float] = defaultdict(float)
        for item in self.scores:
            if item.counts_for(positions):
                agg[item.component] = max(agg[item.component], abs(item.score))
        return dict(agg)

    def ranked(self, kinds: str = "both", positions: str = "all",
               max_layer: int | None = None) -> list[tuple[Component, float]]:
        allowed = {"both": (HEAD, MLP), "heads": (HEAD,), "mlps": (MLP,)}[kinds]
        items = [(c, s) for c, s in self.component_scores(positions).items()
                 if c.kind in allowed and (max_layer is None or c.layer <= max_layer)]
        return sorted(items, key=lambda cs: (-cs[1], cs[0]))

    def select(self, top_k: int = 8, kinds: str = "both", fraction: float | None = None,
               positions: str = "all", max_layer: int | None = None) -> list[Component]:
        ranked = self.ranked(kinds, positions, max_layer)
        if self.selects_all:
            return [c for c, _ in ranked]
        if fraction is not None:
            total = sum(s for _, s in ranked) or 1.0
            chosen, running = [], 0.0
            for comp, score in ranked:
                if running >= fraction * total:
                    break
                chosen.append(comp)
                running += score
            return chosen
        return [c for c, _ in ranked[:top_k]]

    def select_by(self, config: LocalizeConfig, num_layers: int) -> list[Component]:
        """The components `config`'s selection policy picks (what every editor trains)."""
        return self.select(config.top_k, config.kinds, config.fraction, config.positions, config.max_layer(num_layers))

    def to_dict(self) -> dict:
        return {"method": self.method, "passes": self.passes, "seconds": self.seconds,
                "corruption": self.corruption, "details": self.details,
                "selects_all": self.selects_all,
                "scores": [s.to_dict() for s in self.scores]}


class Localizer(Protocol):
    name: str
    reads_scan: bool

    # scan: the edit's PromptScan (evaluate/prompt_scan.py) of the unedited model, shared with the
    # hard-negative scan; a localizer that scores pool subjects reads it, the others ignore it.
    def __call__(self, model, tokenizer, request, config: LocalizeConfig, scan=None) -> LocalizationResult: ...


LOCALIZERS: dict[str, Callable[..., LocalizationResult]] = {}


def register(name: str, reads_scan: bool = False):
    """reads_scan: the localizer reads the unedited model's next tokens after the template filled
    with pool subjects (the corrupting-subject search), so a caller may preload that scan."""
    def wrap(fn):
        fn.name, fn.reads_scan = name, reads_scan
        LOCALIZERS[name] = fn
        return fn

    return wrap


def get_localizer(name: str) -> Callable[..., LocalizationResult]:
    if name not in LOCALIZERS:
        raise ValueError(f"unknown localizer {name!r}; available: {', '.join(sorted(LOCALIZERS))}")
    return LOCALIZERS[name]


def mean_over_prompts(per_prompt: Sequence[list[ComponentScore]]) -> list[ComponentScore]:
    sums: dict[tuple[Component, str], float] = defaultdict(float)
    for scores in per_prompt:
        for s in scores:
            sums[(s.component, s.position)] += s.score / len(per_prompt)
    return [ComponentScore(c, p, v) for (c, p), v in sorted(sums.items())]
