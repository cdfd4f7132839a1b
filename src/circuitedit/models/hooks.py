"""Hooks on a model's sites (attention-output input, MLP output) and decoder layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .arch import ArchitectureAdapter
from .components import HEAD, MLP

Site = tuple[int, str]  # (layer, HEAD | MLP)
SiteFn = Callable[[Site, torch.Tensor], torch.Tensor | None]


@contextmanager
def site_hooks(model: nn.Module, adapter: ArchitectureAdapter, fn: SiteFn) -> Iterator[None]:
    """Call `fn(site, activation)` at every site; a returned tensor replaces the activation."""
    handles = []

    def pre_hook(layer):
        def hook(_module, args):
            new = fn((layer, HEAD), args[0])
            return None if new is None else (new, *args[1:])
        return hook

    def post_hook(layer):
        def hook(_module, _args, output):
            return fn((layer, MLP), output)
        return hook

    try:
        for layer in range(adapter.num_layers(model)):
            handles.append(model.get_submodule(adapter.attn_out_name(layer)).register_forward_pre_hook(pre_hook(layer)))
            handles.append(model.get_submodule(adapter.mlp_out_name(layer)).register_forward_hook(post_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def row_patcher(rows_by_site: dict, source: dict) -> SiteFn:
    """A SiteFn that writes `source[site][0, positions, dims]` into the listed batch rows.

    rows_by_site: {site: [(row, positions, dims), ...]}; source: {site: (1, T, D) activation}.
    """

    def patch(site, act):
        if site not in rows_by_site:
            return None
        act = act.clone()
        for row, positions, dims in rows_by_site[site]:
            act[row, positions, dims] = source[site][0, positions, dims]
        return act

    return patch


def decoder_layer(model: nn.Module, adapter, layer: int) -> nn.Module:
    return model.get_submodule(adapter.layer_name(layer))


@contextmanager
def layer_output_hooks(model: nn.Module, adapter, fn) -> Iterator[None]:
    """Call `fn(layer, hidden)` on every decoder layer's output hidden state; a tensor replaces it."""
    handles = []

    def make(layer):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = fn(layer, hidden)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    try:
        for layer in range(adapter.num_layers(model)):
            handles.append(decoder_layer(model, adapter, layer).register_forward_hook(make(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def mlp_key_hook(model: nn.Module, adapter, layer: int) -> Iterator[list[torch.Tensor]]:
    """Yield a list that receives the input of `layer`'s MLP output projection, (B, T, d_k), per
    forward: the keys of a key-value editor (ROME, MEMIT)."""
    keys: list[torch.Tensor] = []
    handle = model.get_submodule(adapter.mlp_out_name(layer)).register_forward_pre_hook(
        lambda _module, args: keys.append(args[0]))
    try:
        yield keys
    finally:
        handle.remove()


@contextmanager
def mlp_output_shift(model: nn.Module, adapter, layer: int, rows: torch.Tensor, positions: torch.Tensor,
                     delta: torch.Tensor) -> Iterator[None]:
    """Add `delta` (d,) to the output of `layer`'s MLP output projection at (rows[i],
    positions[i]) for every i: where a key-value editor writes its new value."""
    handle = model.get_submodule(adapter.mlp_out_name(layer)).register_forward_hook(
        lambda _module, _args, output: _add_at(output, rows, positions, delta))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def layer_output_shift(model: nn.Module, adapter, layer: int, rows: torch.Tensor, positions: torch.Tensor,
                       delta: torch.Tensor) -> Iterator[None]:
    """Add `delta` (d,) to the hidden state that decoder layer `layer` outputs (the residual stream
    after it) at (rows[i], positions[i]) for every i: where MEMIT writes its target."""
    with layer_output_hooks(model, adapter,
                            lambda index, hidden: _add_at(hidden, rows, positions, delta) if index == layer else None):
        yield


def _add_at(activation: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    shifted = activation.clone()
    shifted[rows, positions] = shifted[rows, positions] + delta.to(activation.dtype)
    return shifted
