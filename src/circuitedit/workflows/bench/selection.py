"""Fact selection: keep the facts the unedited model knows, in file order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ...core.forward import object_logprobs
from ...core.generate import greedy_continuations
from ...core.matching import contains_object
from ...core.tokens import TargetTokenizationError
from ...data.datasets import SPORTS
from ...data.requests import EditRequest
from ..pipeline import check_request


@dataclass
class Selection:
    kept: list[int]  # record indices, in file order
    scanned: int
    total: int
    untokenizable: int = 0
    criterion: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def knows(model, tokenizer, requests: Sequence[EditRequest], fmt: str, max_new_tokens: int = 10) -> list[bool]:
    """Whether the unedited model knows each fact (criterion: the package docstring)."""
    if fmt == "sports":
        prompts = [r.text for r in requests for _ in SPORTS]
        objects = [s for _ in requests for s in SPORTS]
        scores = object_logprobs(model, tokenizer, prompts, objects).view(len(requests), len(SPORTS))
        return [SPORTS[int(row.argmax())] == r.old_object for row, r in zip(scores, requests, strict=True)]
    texts = greedy_continuations(model, tokenizer, [r.text for r in requests], max_new_tokens)
    return [contains_object(t, r.old_object) for t, r in zip(texts, requests, strict=True)]


def select_facts(model, tokenizer, requests: Sequence[EditRequest], fmt: str, n: int, keep_unknown: bool = False,
                 max_scan: int | None = None, batch_size: int = 32) -> Selection:
    criterion = ("none (--keep-unknown)" if keep_unknown else
                 "true sport ranks first of the three" if fmt == "sports" else
                 "greedy continuation contains the true object")
    selection = Selection([], 0, len(requests), criterion=criterion)
    limit = len(requests) if max_scan is None else min(max_scan, len(requests))
    index = 0
    while index < limit and len(selection.kept) < n:
        chunk = []
        while index < limit and len(chunk) < (1 if keep_unknown else batch_size):
            try:
                check_request(tokenizer, requests[index])
                chunk.append(index)
            except TargetTokenizationError:
                selection.untokenizable += 1
            index += 1
        verdicts = [True] * len(chunk) if keep_unknown else knows(model, tokenizer, [requests[i] for i in chunk], fmt)
        for i, ok in zip(chunk, verdicts, strict=True):
            if len(selection.kept) >= n:
                break
            selection.scanned = i + 1
            if ok:
                selection.kept.append(i)
        if not chunk:
            selection.scanned = index
    return selection



def select_dataset_controls(model, tokenizer, requests: Sequence[EditRequest], edited: Sequence[int], start: int,
                            n: int, batch_size: int = 32) -> list[int]:
    """Up to `n` record indices from `start` on (never edited: the edited facts all come before
    it) whose fact the unedited model states (greedy continuation names the object), none about an
    edited subject: the dataset's own control facts, beside the built-in set."""
    subjects = {requests[i].subject.casefold() for i in edited}
    candidates = [i for i in range(start, len(requests)) if requests[i].subject.casefold() not in subjects]
    kept: list[int] = []
    for offset in range(0, len(candidates), batch_size):
        if len(kept) >= n:
            break
        chunk = candidates[offset:offset + batch_size]
        texts = greedy_continuations(model, tokenizer, [requests[i].text for i in chunk], 10)
        kept += [i for i, t in zip(chunk, texts, strict=True) if contains_object(t, requests[i].old_object)]
    return kept[:n]
