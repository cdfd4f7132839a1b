"""`rome`: Rank-One Model Editing (Meng et al. 2022, arXiv 2202.05262), from the paper's text.

At one MLP (the top-ranked localized MLP, or `keyed.layer`), the fact's key k* is the down
projection's input at the subject's last token, averaged over the training prompts (the edit
prompt, its paraphrases and their sampled prefixes). A shift δ of that projection's output at the
subject's last token is optimised so that the model states the new object, with a KL term that
keeps what the model says about the subject itself ("{subject} is a") and a bound on ‖δ‖. Then

    W ← W + δ uᵀ / (uᵀ k*),   u = (C + λI)⁻¹ k*,   C = E[k kᵀ] on ordinary text,

so W k* moves by exactly δ, and a key k with uᵀk = 0 (orthogonal to k* in the C⁻¹ metric) maps
as before: the edit is keyed on the subject's representation, not on the words of the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.forward import hidden_states, input_device, logits_from_hidden
from ..core.tokens import batch_from_ids, encode_text, padding_id, prompt_and_target_ids
from ..data.requests import EditRequest
from ..models.arch import get_adapter
from ..models.components import MLP, Component
from ..models.hooks import mlp_key_hook, mlp_output_shift
from .base import EditOutcome, register
from .covariance import CorpusSpec, layer_covariance
from .deltas import WeightDelta
from .training.loop import StageLog

ESSENCE = "{} is a"  # ROME's essence prompt: what the model says of the subject itself


def edited_layer(components: list[Component], layer: int | None) -> int:
    """The configured layer, else the top-ranked localized MLP's: localization chooses the layer."""
    if layer is not None:
        return layer
    mlps = [c for c in components if c.kind == MLP]
    if not mlps:
        raise ValueError("rome edits one MLP: the localization selected none (localize.kinds mlps or both, "
                         "or set editor.keyed.layer)")
    return mlps[0].layer


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


def key_and_output(model: nn.Module, adapter, layer: int, rows: ValueRows) -> tuple[torch.Tensor, torch.Tensor]:
    """(k*, W k* + b): the mean key at the training prompts' subject tokens, and its output."""
    with torch.no_grad(), mlp_key_hook(model, adapter, layer) as keys:
        hidden_states(model, rows.batch.input_ids, rows.batch.attention_mask)
    train = rows.subject_rows[:-1]
    key = keys[0][train, rows.subject_positions[:-1]].float().mean(0)  # (d_k,)
    module = model.get_submodule(adapter.mlp_out_name(layer))
    with torch.no_grad():
        output = module(key.to(keys[0].dtype)[None])[0].float()  # (d,)
    return key, output


def optimise_value(model: nn.Module, adapter, layer: int, rows: ValueRows, output: torch.Tensor, keyed,
                   progress=None) -> tuple[torch.Tensor, StageLog]:
    """δ (d,): the shift of the MLP output at the subject token that makes the training prompts
    state the new object, with ROME's essence KL term, weight decay and norm bound."""
    log = StageLog("value", trainable_parameters=output.numel())
    start = time.perf_counter()
    batch = rows.batch
    delta = torch.zeros_like(output, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=keyed.value_lr)
    bound = keyed.clamp_norm * output.norm()
    with torch.no_grad():
        hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
        essence_before = F.log_softmax(logits_from_hidden(model, hidden[rows.essence_row, rows.essence_position]), -1)
    for step in range(keyed.value_steps):
        with torch.enable_grad(), mlp_output_shift(model, adapter, layer, rows.subject_rows, rows.subject_positions,
                                                   delta):
            hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
            token_lp = F.log_softmax(logits_from_hidden(model, hidden[batch.rows, batch.positions]), -1)
            token_lp = token_lp.gather(1, batch.targets[:, None])[:, 0]
            per_prompt = torch.zeros(len(rows.n_targets), device=token_lp.device).index_add(0, batch.owners, token_lp)
            nll = -(per_prompt / rows.n_targets).mean()
            essence = F.log_softmax(logits_from_hidden(model, hidden[rows.essence_row, rows.essence_position]), -1)
            kl = F.kl_div(essence, essence_before, log_target=True, reduction="sum")
            loss = nll + keyed.kl_weight * kl + keyed.weight_decay * delta.norm() / output.norm() ** 2
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


def rank_one_update(key: torch.Tensor, delta: torch.Tensor, covariance: torch.Tensor, ridge: float) -> torch.Tensor:
    """ΔW (d, d_k) = δ uᵀ / (uᵀ k*), u = (C + λI)⁻¹ k*, λ = ridge · mean(diag C): ΔW k* = δ exactly,
    and ΔW k = 0 for every k with uᵀ k = 0."""
    c = covariance.double()
    c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    u = torch.linalg.solve(c, key.double())
    return (torch.outer(delta.double(), u) / (u @ key.double())).float()


def layer_delta(name: str, adapter, layer: int, update: torch.Tensor) -> WeightDelta:
    """ΔW (d, d_k) of the layer's down projection as that weight is stored (transposed for
    GPT-2's Conv1D)."""
    stored = update.T if adapter.weights_transposed else update
    return WeightDelta(name, {f"{adapter.mlp_out_name(layer)}.weight": stored.contiguous().cpu()}, {"layer": layer})


@register("rome")
def rome(model, tokenizer, request, components, context, config, progress=None, covariance=None) -> EditOutcome:
    """`model` is the pipeline's private copy (edit() deep-copies and freezes it). covariance: the
    layer's C when the caller has it (a second edit of the same layer keys on the base model's)."""
    keyed = config.keyed
    adapter = get_adapter(model)
    layer = edited_layer(list(components), keyed.layer)
    prompts = [p for p in context.prompts if request.subject.casefold() in p.casefold()]
    rows = value_rows(tokenizer, request, prompts, input_device(model))
    key, output = key_and_output(model, adapter, layer, rows)
    delta, log = optimise_value(model, adapter, layer, rows, output, keyed, progress)
    if covariance is None:
        covariance = layer_covariance(model, tokenizer, layer, CorpusSpec(keyed.covariance_tokens),
                                      cache=keyed.cache_covariance)
    artifact = layer_delta("rome", adapter, layer, rank_one_update(key, delta, covariance.to(key.device), keyed.ridge))
    return EditOutcome(model=artifact.apply(model), stages=[log], adapters=[artifact])
