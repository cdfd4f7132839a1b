"""The unedited model's next token after many short prompts, each prompt run once per edit.

Two parts of an edit read the same prompts on the unedited model: the localizer's search for a
corrupting subject (the edit template filled with every pool subject of the subject's token
length) and the hard-negative scan (the template filled with every pool subject); the first's
prompts are a subset of the second's. One `PromptScan` per edit runs each prompt once and serves
both (evidence: docs/speed.md). The edit preloads the whole filled template as
one group (`preload`), kept in the reference cache, so a later edit of the same template (a
dataset's relation, a re-run) reads the rows back instead of running the scan again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .forward import iter_last_token_hidden
from .head import head_reductions
from .reference_cache import ModelReferences, tokenizer_identity

SCAN_BATCH = 64  # prompts a forward: the fastest batch for a scan on CPU (evidence: docs/speed.md)


@dataclass
class NextTokenStats:
    """Per prompt: the next token's argmax and the LM head's reductions the scans need."""

    top_token: torch.Tensor  # (N,) argmax (lowest id among ties)
    top_logit: torch.Tensor  # (N,)
    watched_logit: torch.Tensor  # (N,) logit of the watched token
    lse: torch.Tensor  # (N,) log-sum-exp of the logits

    def watched_prob(self) -> torch.Tensor:
        return (self.watched_logit - self.lse).exp()

    def top_prob(self) -> torch.Tensor:
        return (self.top_logit - self.lse).exp()


class PromptScan:
    """Memo of one model's next-token statistics, keyed by (prompt text, watched token).

    Use it only while the model's weights stay as they were when it was made (one edit's
    preparation, before any training): it never looks at the weights again.
    """

    def __init__(self, model: nn.Module, tokenizer, batch_size: int = SCAN_BATCH):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self._memo: dict[tuple[str, int], tuple[int, float, float, float]] = {}

    def preload(self, prompts: Sequence[str], watched: int, references: ModelReferences | None = None) -> None:
        """Scan `prompts` as one group, in their order, before anything reads them: every later
        `stats` call then gets the same numbers, whichever subset it asks for and whatever ran
        before it (a batch's padding and shared prefix move the last bits). With `references`, the
        rows are read from there when this model has scanned these prompts before (a later edit
        of the same template), else computed and stored."""
        unique = list(dict.fromkeys(prompts))

        def compute() -> list[list[float]]:
            self.stats(unique, watched)
            return [list(self._memo[(p, watched)]) for p in unique]

        if references is None:
            compute()
            return
        key = {"prompts": hashlib.sha256(json.dumps(unique).encode()).hexdigest(), "count": len(unique),
               "watched": watched, "batch_size": self.batch_size,
               "tokenizer": tokenizer_identity(self.tokenizer, unique)}
        rows = references.get_or_compute("scan", key, compute)
        for prompt, (top, top_logit, watched_logit, lse) in zip(unique, rows, strict=True):
            self._memo[(prompt, watched)] = (int(top), float(top_logit), float(watched_logit), float(lse))

    def stats(self, prompts: Sequence[str], watched: int) -> NextTokenStats:
        missing = [p for p in dict.fromkeys(prompts) if (p, watched) not in self._memo]
        if missing:
            self._scan(missing, watched)
        rows = [self._memo[(p, watched)] for p in prompts]
        return NextTokenStats(torch.tensor([r[0] for r in rows], dtype=torch.long),
                              torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]),
                              torch.tensor([r[3] for r in rows]))

    @torch.no_grad()
    def _scan(self, prompts: list[str], watched: int) -> None:
        # The rows of a filled template share its leading tokens, run once per batch.
        for indices, hidden in iter_last_token_hidden(self.model, self.tokenizer, prompts, self.batch_size,
                                                      share_prefix=True):
            # Three numbers of each softmax row, without writing the (batch, V) logits out.
            head = head_reductions(self.model, hidden, torch.full((len(indices), 1), watched))
            rows = zip(head.top_index.tolist(), head.top_values[:, 0].tolist(), head.picked[:, 0].tolist(),
                       head.lse.tolist(), strict=True)
            for index, row in zip(indices, rows, strict=True):
                self._memo[(prompts[index], watched)] = row
