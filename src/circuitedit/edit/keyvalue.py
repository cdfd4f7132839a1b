"""What the key-value editors (ROME, MEMIT, AlphaEdit) share: the edited layer, the training rows
with the subject's last token located in each, the keys read there, the value search and the
weight delta stored in each parameter's own layout.

A key is the input of an MLP's down projection at the subject's last token; the value search
finds a shift δ of some activation at that token (ROME: the down projection's output; MEMIT and
AlphaEdit: the residual stream after the last edited layer) that makes the training prompts
state the new object, with ROME's KL term on what the model says of the subject itself ("{subject}
is a"), a norm penalty and a bound on ‖δ‖.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.forward import hidden_states, logits_from_hidden
from ..core.tokens import batch_from_ids, encode_text, padding_id, prompt_and_target_ids
from ..data.requests import EditRequest
from ..models.components import MLP, Component
from ..models.hooks import mlp_key_hook
from .deltas import WeightDelta
from .training.loop import StageLog

ESSENCE = "{} is a"  # ROME's essence prompt: what the model says of the subject itself

Shift = Callable[[torch.Tensor], AbstractContextManager]  # δ -> a context adding it where the editor writes


def edited_layer(components: Sequence[Component], layer: int | None, method: str = "rome") -> int:
    """The configured layer, else the top-ranked localized MLP's: localization chooses the layer."""
    if layer is not None:
        return layer
    mlps = [c for c in components if c.kind == MLP]
    if not mlps:
        raise ValueError(f"{method} edits MLPs: the localization selected none (localize.kinds mlps or both, "
                         "or set editor.keyed.layer)")
    return mlps[0].layer


def subject_prompts(request: EditRequest, prompts: Sequence[str]) -> list[str]:
    """The training prompts that mention the subject (a key is read at its last token)."""
    return [p for p in prompts if request.subject.casefold() in p.casefold()]


def subject_last_position(tokenizer, text: str, subject: str) -> int:
    """Index of the subject's last token in `text` (its last mention)."""
    end = text.rfind(subject)
    if end < 0:
        end = text.casefold().rfind(subject.casefold())
    if end < 0:
        raise ValueError(f"subject {subject!r} not found in training prompt {text!r}")
    return len(encode_text(tokenizer, text[: end + len(subject)])) - 1


@dataclass
class ValueRows:
    """The padded batch the value search runs: training prompts with the new object, then the
    essence prompt; where δ is added (every row's subject token) and where losses are read."""

    batch: object  # TeacherForcedBatch
    subject_rows: torch.Tensor  # (R,)
    subject_positions: torch.Tensor  # (R,)
    essence_row: int
    essence_position: int
    n_targets: torch.Tensor  # (P,) target tokens per training prompt

    def at_subject(self, activation: torch.Tensor) -> torch.Tensor:
        """(P, ...) of a (B, T, ...) activation at the training prompts' subject tokens."""
        return activation[self.subject_rows[:-1], self.subject_positions[:-1]]


def value_rows(tokenizer, request: EditRequest, prompts: list[str], device) -> ValueRows:
    pairs = [prompt_and_target_ids(tokenizer, p, request.new_object) for p in prompts]
    positions = [subject_last_position(tokenizer, p, request.subject) for p in prompts]
    essence = ESSENCE.format(request.subject)
    essence_ids = encode_text(tokenizer, essence)
    positions.append(subject_last_position(tokenizer, essence, request.subject))
    batch = batch_from_ids([*pairs, (essence_ids, [])], padding_id(tokenizer), device)
    n_targets = torch.tensor([len(t) for _, t in pairs], device=device)
    rows = torch.arange(len(positions), device=device)
    return ValueRows(batch, rows, torch.tensor(positions, device=device), len(pairs), len(essence_ids) - 1,
                     n_targets)


def subject_keys(model: nn.Module, adapter, layer: int, rows: ValueRows) -> torch.Tensor:
    """(P, d_k) fp32: the down projection's input at each training prompt's subject token."""
    with torch.no_grad(), mlp_key_hook(model, adapter, layer) as keys:
        hidden_states(model, rows.batch.input_ids, rows.batch.attention_mask)
    return rows.at_subject(keys[0]).float()


def optimise_value(model: nn.Module, rows: ValueRows, base: torch.Tensor, keyed, shift: Shift, clamp: float,
                   progress=None) -> tuple[torch.Tensor, StageLog]:
    """δ (d,): the shift `shift(δ)` adds at the subject token that makes the training prompts
    state the new object, with ROME's essence KL term, a norm penalty relative to the unshifted
    activation `base` (d,) and the bound ‖δ‖ ≤ clamp·‖base‖."""
    log = StageLog("value", trainable_parameters=base.numel())
    start = time.perf_counter()
    batch = rows.batch
    delta = torch.zeros_like(base, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=keyed.value_lr)
    bound = clamp * base.norm()
    with torch.no_grad():
        hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
        essence_before = F.log_softmax(logits_from_hidden(model, hidden[rows.essence_row, rows.essence_position]), -1)
    for step in range(keyed.value_steps):
        with torch.enable_grad(), shift(delta):
            hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
            token_lp = F.log_softmax(logits_from_hidden(model, hidden[batch.rows, batch.positions]), -1)
            token_lp = token_lp.gather(1, batch.targets[:, None])[:, 0]
            per_prompt = torch.zeros(len(rows.n_targets), device=token_lp.device).index_add(0, batch.owners, token_lp)
            nll = -(per_prompt / rows.n_targets).mean()
            essence = F.log_softmax(logits_from_hidden(model, hidden[rows.essence_row, rows.essence_position]), -1)
            kl = F.kl_div(essence, essence_before, log_target=True, reduction="sum")
            loss = nll + keyed.kl_weight * kl + keyed.weight_decay * delta.norm() / base.norm() ** 2
        log.losses.append(float(nll.detach()))
        log.steps = step + 1
        if progress:
            progress(log.name, step, float(loss))
        if log.losses[-1] < keyed.value_tolerance:
            log.converged = True
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            if delta.norm() > bound:
                delta.mul_(bound / delta.norm())
    log.seconds = time.perf_counter() - start
    return delta.detach(), log


def ridged(covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    """C + λI (fp64), λ = ridge · mean(diag C): the keys are ill-conditioned on small models."""
    c = covariance.double()
    return c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)


def weight_delta(name: str, adapter, updates: dict[int, torch.Tensor], details: dict) -> WeightDelta:
    """The down projections' ΔW (d, d_k) per layer as each weight is stored (transposed for
    GPT-2's Conv1D)."""
    tensors = {f"{adapter.mlp_out_name(layer)}.weight": (update.T if adapter.weights_transposed else update)
               .contiguous().cpu() for layer, update in updates.items()}
    return WeightDelta(name, tensors, details)


def layer_delta(name: str, adapter, layer: int, update: torch.Tensor) -> WeightDelta:
    """ΔW (d, d_k) of one layer's down projection, as that weight is stored."""
    return weight_delta(name, adapter, {layer: update}, {"layer": layer})
