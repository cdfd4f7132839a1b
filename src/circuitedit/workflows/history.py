"""An edit history: one model holding many edits made one after another. The directory records
each edit in order (its requests, components, saved stages, metrics when made, software) and the
measurements after each batch; the edited model is the base model with every kept edit's stages
applied in order. history.json is the only index: an edit directory it does not list (a run
killed between the two writes) is ignored and replaced."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.files import atomic_directory, check_output_target, write_text_atomic
from ..data.requests import EditRequest
from ..edit.base import freeze
from ..edit.deltas import WeightDelta, is_delta_dir
from .outputs import applied_stage
from .together import fact_key

HISTORY_FILE = "history.json"
ENTRY_FILE = "entry.json"
FORMAT = 1


class HistoryError(ValueError):
    """A damaged or mismatched history directory, or a request it cannot take."""


@dataclass
class HistoryEntry:
    """One edit of the sequence: one request, or a batch written in one update (`--together`)."""

    id: int
    method: str
    requests: list[EditRequest]
    stages: list[str]  # adapters/<stage> of its directory, in training order
    components: list[list[str]]  # per request
    metrics: list[dict]  # per request, measured when the edit was made
    software: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # the edit's phases, in seconds

    @property
    def directory(self) -> str:
        return f"edits/{self.id:04d}"

    def to_dict(self) -> dict:
        return {**asdict(self), "requests": [r.to_dict() for r in self.requests], "directory": self.directory}

    @classmethod
    def from_dict(cls, data: dict) -> HistoryEntry:
        data = {k: v for k, v in data.items() if k != "directory"}
        return cls(**{**data, "requests": [EditRequest.from_dict(r) for r in data["requests"]]})


@dataclass
class EditHistory:
    root: Path
    model: str | None
    entries: list[HistoryEntry] = field(default_factory=list)
    reverted: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)

    # ---- reading and writing ---------------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str) -> EditHistory:
        root = Path(root)
        path = root / HISTORY_FILE
        if not path.is_file():
            raise HistoryError(f"{path} not found (is {root} an edit history, written by `edit --sequential`?)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = [HistoryEntry.from_dict(e) for e in data["edits"]]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise HistoryError(f"{path}: damaged ({type(exc).__name__}: {exc})") from None
        history = cls(root, data.get("model"), entries, data.get("reverted", []), data.get("checkpoints", []))
        for entry in entries:
            for stage in entry.stages:
                if not (root / entry.directory / "adapters" / stage).is_dir():
                    raise HistoryError(f"{root / entry.directory / 'adapters' / stage}: missing (edit {entry.id} "
                                       "lists it: a damaged history)")
        return history

    @classmethod
    def start(cls, root: Path | str, model: str | None) -> EditHistory:
        """The history at `root`, created empty where there is none; one of another model refused."""
        root = Path(root)
        if (root / HISTORY_FILE).exists():
            history = cls.open(root)
            if model is not None and history.model is not None and history.model != model:
                raise HistoryError(f"{root}: a history of model {history.model!r}, not {model!r}")
            return history
        check_output_target(root, HISTORY_FILE)
        root.mkdir(parents=True, exist_ok=True)
        history = cls(root, model)
        history.save()
        return history

    def save(self) -> None:
        data = {"format": FORMAT, "model": self.model, "edits": [e.to_dict() for e in self.entries],
                "reverted": self.reverted, "checkpoints": self.checkpoints}
        write_text_atomic(self.root / HISTORY_FILE, json.dumps(data, indent=1, default=str) + "\n")

    # ---- the sequence ------------------------------------------------------------------------

    def next_id(self) -> int:
        ids = [e.id for e in self.entries] + [r["id"] for r in self.reverted]
        return max(ids, default=0) + 1

    def find(self, edit_id: int) -> HistoryEntry:
        for entry in self.entries:
            if entry.id == edit_id:
                return entry
        known = ", ".join(str(e.id) for e in self.entries) or "none"
        raise HistoryError(f"{self.root}: no edit {edit_id} (edits held: {known})")

    def requests(self) -> list[EditRequest]:
        return [r for e in self.entries for r in e.requests]

    def holding(self, request: EditRequest) -> EditRequest | None:
        """The request already in the history for this subject and relation, if any."""
        return next((r for r in self.requests() if fact_key(r) == fact_key(request)), None)

    def append(self, method: str, results: list, software: dict) -> HistoryEntry:
        """Record one edit (the results of one update: one request, or a batch sharing it): its
        stages written to edits/<id> atomically, then history.json."""
        outcome = results[0].outcome
        entry = HistoryEntry(self.next_id(), method, [r.request for r in results], [a.name for a in outcome.adapters],
                             [[c.name for c in r.components] for r in results], [r.metrics for r in results],
                             software, dict(results[0].timings))
        if not entry.stages:
            raise HistoryError(f"{method} saves no adapter or weight delta: a history cannot rebuild its model "
                               "(use an adapter or key-value method)")
        target = self.root / entry.directory
        if target.exists():  # left by a run killed before history.json listed it
            shutil.rmtree(target)
        with atomic_directory(target) as tmp:
            for artifact in outcome.adapters:
                artifact.save(tmp / "adapters" / artifact.name)
            write_text_atomic(tmp / ENTRY_FILE, json.dumps(entry.to_dict(), indent=1, default=str) + "\n")
        self.entries.append(entry)
        self.save()
        return entry

    def previous_keys(self) -> dict[int, torch.Tensor]:
        """Per layer, K_p K_pᵀ (d_k, d_k) fp64 of the keys every kept edit's weight deltas were solved for."""
        moments: dict[int, torch.Tensor] = {}
        for entry in self.entries:
            for stage in entry.stages:
                directory = self.root / entry.directory / "adapters" / stage
                if is_delta_dir(directory):
                    for layer, keys in WeightDelta.load(directory).keys.items():
                        k = keys.double()
                        moments[layer] = k @ k.T + moments.get(layer, 0)
        return moments

    def edited_model(self, base: nn.Module, without: int | None = None) -> nn.Module:
        """A copy of `base` with every kept edit's stages applied in order (leaving out edit `without`)."""
        model = copy.deepcopy(base)
        freeze(model)
        for entry in self.entries:
            if entry.id == without:
                continue
            for stage in entry.stages:
                model = applied_stage(model, self.root / entry.directory / "adapters" / stage, in_place=True)
        return model.eval()
