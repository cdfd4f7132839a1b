"""Bench configuration: which data, methods, localizers and model; saved with every run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..pipeline import EditConfig

DEFAULT_METHODS = ("none", "unlearn-then-learn", "learn-only", "ia3-all-layers", "ft-full", "ft-localized",
                   "lora-localized")
DEFAULT_LOCALIZER = "attribution"
RANDOM_LOCALIZER = "random"


class BenchError(ValueError):
    pass


@dataclass
class BenchConfig:
    data: str
    fmt: str = "counterfact-rome"
    out: str = "bench"
    n: int = 20
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    localizers: list[str] = field(default_factory=lambda: [DEFAULT_LOCALIZER])
    model: str | None = None
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    keep_unknown: bool = False  # skip the knows-the-fact filter (tiny test models know nothing)
    max_scan: int | None = None  # stop scanning for known facts after this many records
    controls: str | None = None  # JSONL of control facts (default: the built-in set)
    # Other facts of the benchmarked file the unedited model states, never edited: F_control on
    # the dataset itself, beside the built-in set the defaults were chosen with. 0 turns it off.
    dataset_controls: int = 100
    bootstrap: int = 1000
    generation_tokens: int = 40  # length of the greedy generations whose n-gram entropy is fluency
    audit: bool = False  # audit every edit (latent probes, indirect prompts, relearning): a verdict each
    edit: EditConfig = field(default_factory=EditConfig)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["edit"] = self.edit.to_dict()
        return data

