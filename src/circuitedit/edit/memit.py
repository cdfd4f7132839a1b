"""`memit`: Mass-Editing Memory in a Transformer (Meng et al. 2023, arXiv 2210.07229), from the
paper's text.

The edit is spread over a range R of MLP layers (`keyed.layers`, else `keyed.span` consecutive
layers ending at the edited layer L: the top-ranked localized MLP or `keyed.layer`). For each
fact i, the target z_i is the residual stream after layer L at the subject's last token (averaged
over the training prompts) plus a shift δ_i found as ROME's value is, but at that layer's output:
z_i = h_i^L + δ_i. Then, for each layer l of R in order, on the model as updated so far:

    k_i   = the mean down-projection input at the subject's last token (recomputed per layer),
    r_i   = (z_i − h_i^L) / (layers of R from l to L)   (the residual left, spread evenly),
    ΔW_l  = V Kᵀ (λ C_l + K Kᵀ)⁻¹,  K = [k_i], V = [v_i],  C_l = E[k kᵀ] on ordinary text,

where v_i is the down projection's output shift that adds r_i to the residual: r_i itself where
the output joins the residual as it is, and through Gemma-3's post-feedforward norm the least-
squares shift over the training prompts' outputs. λ = `covariance_weight` · d_k. The layers'
ΔW are applied as they are found and saved as one weight delta (adapters/memit).

`memit_update` takes many requests at once (the paper's mass edit); the editor passes one.
`alphaedit` reuses the loop with another solve for ΔW_l.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.forward import hidden_states, input_device
from ..data.requests import EditRequest
from ..models.arch import get_adapter
from ..models.components import Component
from ..models.hooks import layer_output_hooks, layer_output_shift, mlp_key_hook
from .base import EditOutcome, register, register_batch
from .covariance import CorpusSpec, layer_covariances
from .keyed import KeyedConfig
from .keyvalue import (
    ValueRows,
    edited_layer,
    optimise_value,
    ridged,
    subject_prompts,
    value_rows,
    weight_delta,
)
from .training.loop import StageLog

Solve = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (layer, K (d_k, n), V (d, n)) -> ΔW (d, d_k)
# (C per layer, config, K_p K_pᵀ per layer of earlier edits or None) -> (solve, details)
Solver = Callable[[dict[int, torch.Tensor], KeyedConfig, dict[int, torch.Tensor] | None], tuple[Solve, dict]]


def edited_layers(components: Sequence[Component], keyed: KeyedConfig, method: str = "memit") -> list[int]:
    """`keyed.layers`, else the `keyed.span` layers ending at the edited layer (`edited_layer`)."""
    if keyed.layers is not None:
        return sorted(set(keyed.layers))
    last = edited_layer(components, keyed.layer, method)
    return list(range(max(0, last - keyed.span + 1), last + 1))


def memit_layer_update(keys: torch.Tensor, values: torch.Tensor, preserved: torch.Tensor) -> torch.Tensor:
    """ΔW (d, d_k) = V Kᵀ (C₀ + K Kᵀ)⁻¹: the least-squares update that moves W K by V while
    keeping W on the preserved keys C₀ = λC stands for. keys (d_k, n), values (d, n)."""
    k = keys.double()
    return torch.linalg.solve(preserved.double() + k @ k.T, k @ values.double().T).T.float()


def memit_solver(covariances: dict[int, torch.Tensor], keyed: KeyedConfig,
                 previous: dict[int, torch.Tensor] | None = None) -> tuple[Solve, dict]:
    """MEMIT's solve (earlier edits are not protected beyond C: `previous` is not used)."""
    def solve(layer: int, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        c = ridged(covariances[layer].to(keys.device), keyed.ridge)
        return memit_layer_update(keys, values, keyed.covariance_weight * c.shape[0] * c)

    return solve, {"covariance_weight": keyed.covariance_weight}


def subject_states(model: nn.Module, adapter, layer: int, last: int, rows: ValueRows) -> tuple[torch.Tensor, torch.Tensor]:
    """((P, d_k) keys of `layer`, (P, d) residual stream after layer `last`), fp32, at the
    training prompts' subject tokens, from one forward pass."""
    states: list[torch.Tensor] = []

    def keep(index, hidden):
        if index == last:
            states.append(hidden)

    with torch.no_grad(), mlp_key_hook(model, adapter, layer) as keys, layer_output_hooks(model, adapter, keep):
        hidden_states(model, rows.batch.input_ids, rows.batch.attention_mask)
    return rows.at_subject(keys[0]).float(), rows.at_subject(states[0]).float()


def mlp_value(model: nn.Module, adapter, layer: int, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """v (d,): the shift of `layer`'s down-projection output that adds `residual` (d,) to the
    residual stream at the keys' (P, d_k) tokens. Where the output joins the residual through a
    norm (Gemma-3), the norm turns the output rather than adding to it: v is then the
    least-squares shift over the P outputs (L-BFGS; a small penalty on ‖v‖ keeps it finite where
    the norm's scale invariance leaves a direction free)."""
    name = adapter.mlp_out_norm_name(layer)
    if name is None:
        return residual
    norm = model.get_submodule(name)
    module = model.get_submodule(adapter.mlp_out_name(layer))
    with torch.no_grad():
        outputs = module(keys.to(module.weight.dtype)).float()
        wanted = norm(outputs).float() + residual
        scale = residual.norm() ** 2 + 1e-12
        size = outputs.norm(dim=-1).mean() ** 2 + 1e-12
    shift = torch.zeros_like(residual, requires_grad=True)
    optimiser = torch.optim.LBFGS([shift], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        miss = ((norm(outputs + shift).float() - wanted) ** 2).sum(-1).mean() / scale
        loss = miss + 1e-4 * shift.pow(2).sum() / size
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return shift.detach()


@dataclass
class SpreadEdit:
    """What `memit_update` did: ΔW (d, d_k) per layer (already added to the model), the value
    search of each request, and per request how much of its target shift z − h^L is left
    unreached after the update (‖z − h^L‖ / ‖δ‖)."""

    updates: dict[int, torch.Tensor]
    stages: list[StageLog]
    unreached: list[float]
    keys: dict[int, torch.Tensor]  # layer -> K (d_k, n): the requests' keys each update was solved for


def memit_update(model: nn.Module, tokenizer, requests: Sequence[EditRequest], layers: Sequence[int],
                 covariances: dict[int, torch.Tensor], keyed: KeyedConfig,
                 prompts: Sequence[Sequence[str]] | None = None, solve: Solve | None = None,
                 progress=None) -> SpreadEdit:
    """Write every request into `model` (in place) over `layers` as MEMIT does: one target per
    request at the last layer, then each layer's update from the keys and residuals of all the
    requests on the model updated so far. prompts: each request's training prompts (default: its
    prompt and paraphrases); those naming the subject are used. covariances: C per layer. solve:
    each layer's ΔW (default MEMIT's, `memit_solver`; `alphaedit_solver` projects it)."""
    adapter = get_adapter(model)
    layers = sorted(set(layers))
    last = layers[-1]
    prompts = prompts if prompts is not None else [r.training_prompts for r in requests]
    device = input_device(model)
    rows = [value_rows(tokenizer, r, subject_prompts(r, p), device) for r, p in zip(requests, prompts, strict=True)]
    targets, stages = [], []
    for fact in rows:
        base = subject_states(model, adapter, last, last, fact)[1].mean(0)
        shift = lambda d, f=fact: layer_output_shift(model, adapter, last, f.subject_rows,  # noqa: E731
                                                     f.subject_positions, d)
        delta, log = optimise_value(model, fact, base, keyed, shift, keyed.residual_clamp, progress)
        targets.append((base + delta, float(delta.norm())))
        stages.append(log)
    solve = solve or memit_solver(covariances, keyed)[0]
    updates, solved_keys = {}, {}
    for index, layer in enumerate(layers):
        keys, values = [], []
        for fact, (target, _) in zip(rows, targets, strict=True):
            fact_keys, hidden = subject_states(model, adapter, layer, last, fact)
            residual = (target - hidden.mean(0)) / (len(layers) - index)
            keys.append(fact_keys.mean(0))
            values.append(mlp_value(model, adapter, layer, fact_keys, residual))
        solved_keys[layer] = torch.stack(keys, 1)
        updates[layer] = solve(layer, solved_keys[layer], torch.stack(values, 1))
        weight_delta("", adapter, {layer: updates[layer]}, {}).apply(model)
    unreached = [float((target - subject_states(model, adapter, last, last, fact)[1].mean(0)).norm() / max(size, 1e-12))
                 for fact, (target, size) in zip(rows, targets, strict=True)]
    return SpreadEdit(updates, stages, unreached, solved_keys)


def batch_layers(components: Sequence[Sequence[Component]], keyed: KeyedConfig, method: str) -> list[int]:
    """One layer range for a batch: `keyed.layers`, else the span ending at the layer the
    requests' localizations rank first most often (the lowest such layer on a tie)."""
    if keyed.layers is not None or keyed.layer is not None:
        return edited_layers([], keyed, method)
    firsts = [edited_layer(list(c), None, method) for c in components]
    last = min(set(firsts), key=lambda layer: (-firsts.count(layer), layer))
    return list(range(max(0, last - keyed.span + 1), last + 1))


def spread_editor(name: str, solver: Solver):
    """Register the editor `name` (MEMIT's loop with `solver`'s ΔW) on one request, and its
    batch form on many at once (`edit --together`)."""

    def edit_many(model, tokenizer, requests, components, context, config, progress=None) -> EditOutcome:
        """`model` is the pipeline's private copy (edit() deep-copies and freezes it)."""
        keyed = config.keyed
        layers = batch_layers(components, keyed, name)
        covariances = layer_covariances(context.key_source(model), tokenizer, layers, CorpusSpec(keyed.covariance_tokens),
                                        cache=keyed.cache_covariance)
        solve, details = solver(covariances, keyed, context.previous_keys)
        edit = memit_update(model, tokenizer, requests, layers, covariances, keyed, context.by_request(len(requests)),
                            solve, progress)
        artifact = weight_delta(name, get_adapter(model), edit.updates,
                                {"layers": layers, "unreached": edit.unreached, "facts": len(requests), **details})
        artifact.keys = {layer: k.cpu() for layer, k in edit.keys.items()}
        return EditOutcome(model=model, stages=edit.stages, adapters=[artifact])

    def editor(model, tokenizer, request, components, context, config, progress=None) -> EditOutcome:
        return edit_many(model, tokenizer, [request], [components], context, config, progress)

    register_batch(name)(edit_many)
    editor.uses_retain = edit_many.uses_retain = False
    return register(name)(editor)


memit = spread_editor("memit", memit_solver)
