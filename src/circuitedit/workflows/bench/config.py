"""Bench configuration: which data, methods, localizers and model; saved with every run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ...core.config import CheckedConfig, FieldChecks
from ...data.datasets import FORMATS
from ..pipeline import EditConfig

DEFAULT_METHODS = ("none", "unlearn-then-learn", "learn-only", "ia3-all-layers", "ft-full", "ft-localized",
                   "lora-localized")
DEFAULT_LOCALIZER = "attribution"
RANDOM_LOCALIZER = "random"


class BenchError(ValueError):
    pass


@dataclass
class Workers:
    """Where a bench's edits run: in this process (`count` 1, the default), or on `count` Ray
    actors (workflows/bench/distributed.py). Not part of a run's identity: a run may be resumed
    with another count."""

    count: int = 1
    address: str | None = None  # an existing Ray cluster ("auto": `ray start --head`'s); None: a local one
    max_retries: int = 2  # a fact whose worker died reruns on a new worker this often, then is an error row

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise BenchError(f"--workers must be at least 1, got {self.count!r}")
        if self.address and self.count < 2:
            raise BenchError("--address runs the bench on a Ray cluster: pass --workers N (N >= 2) too")

    @property
    def distributed(self) -> bool:
        return self.count > 1


@dataclass
class BenchConfig(CheckedConfig):
    """One benchmark run; `validate` runs at construction."""

    data: str = field(metadata={"help": "fact data set file"})
    fmt: str = field(default="counterfact-rome", metadata={"help": "the data file's schema"})
    out: str = field(default="bench", metadata={"help": "output directory: results.jsonl, summary.{json,md,png}"})
    n: int = field(default=20, metadata={"help": "facts to edit: known facts, in file order"})
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS), metadata={"help": "the editors compared"})
    localizers: list[str] = field(default_factory=lambda: [DEFAULT_LOCALIZER], metadata={"help": "the localizers of the localized methods (random is the control)"})
    model: str | None = field(default=None, metadata={"help": "HF id, local path, or alias (default: embedded gemma3-270m; also smollm2)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the hardware is fast at it), fp32, bf16"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 (default: cuda when present)"})
    seed: int = field(default=0, metadata={"help": "seed of the random draws (new sports objects, distractors, random components, bootstrap)"})
    keep_unknown: bool = field(default=False, metadata={"help": "skip the knows-the-fact filter (tiny test models know nothing)"})
    max_scan: int | None = field(default=None, metadata={"help": "scan at most this many records for known facts"})
    controls: str | None = field(default=None, metadata={"help": "JSONL control facts (default: the built-in set)"})
    # Other facts of the benchmarked file the unedited model states, never edited: F_control on
    # the dataset itself, beside the built-in set the defaults were chosen with. 0 turns it off.
    dataset_controls: int = field(default=100, metadata={"help": "other facts of the file the unedited model states, kept as controls (0: none)"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples of each 95% interval"})
    generation_tokens: int = field(default=40, metadata={"help": "length of the greedy generations whose n-gram entropy is fluency"})
    audit: bool = field(default=False, metadata={"help": "audit every edit (latent probes, indirect prompts, relearning): a verdict each"})
    edit: EditConfig = field(default_factory=EditConfig, metadata={"help": "the config of every edit"})

    def validate(self, section: str = "bench") -> None:
        """Raise a ValueError naming the first field (as `section.field`) that cannot run (the
        methods and localizers are looked up in their registries by `run_bench`)."""
        check = FieldChecks(self, section)
        for name in ("data", "out", "dtype"):
            check.text(name)
        check.choice("fmt", ("auto", *FORMATS, "sports"))
        for name in ("methods", "localizers"):
            names = getattr(self, name)
            if not (isinstance(names, list | tuple) and names and all(isinstance(m, str) and m for m in names)):
                check.fail(name, f"expected a non-empty list of names, got {names!r}")
        for name in ("model", "device", "controls"):
            check.text(name, optional=True)
        check.integer("n", 1)
        check.integer("max_scan", 1, optional=True)
        check.integer("seed")
        check.integer("dataset_controls", 0)
        check.integer("bootstrap", 1)
        check.integer("generation_tokens", 1)
        check.flag("keep_unknown")
        check.flag("audit")
        if not isinstance(self.edit, EditConfig):
            check.fail("edit", f"expected an EditConfig, got {type(self.edit).__name__}")
        self.edit.validate()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["edit"] = self.edit.to_dict()
        return data

