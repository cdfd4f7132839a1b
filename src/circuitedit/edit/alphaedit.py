"""`alphaedit`: null-space constrained knowledge editing (Fang et al., ICLR 2025, arXiv
2410.02355), from the paper's text.

MEMIT's loop (targets at the last layer, keys and residuals per layer, `memit.memit_update`) with
each layer's update projected onto the null space of the preserved knowledge. The preserved keys
K₀ are summarised by C = E[k kᵀ] on ordinary text (uncentred); the eigenvectors U of C whose
eigenvalues are below `keyed.nullspace_threshold` times the largest span that null space, and
P = U Uᵀ. The paper's objective, ‖(W + ΔP) K₁ − V₁‖² + ‖ΔP‖² + ‖ΔP K_p‖² (K_p: keys of earlier
edits, when edits come in sequence), has the closed form

    ΔW = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + αI)⁻¹,

with the paper's I weighted by α = `keyed.nullspace_ridge` · mean(diag C), so the regulariser
keeps its meaning across models whose keys differ in scale. ΔW (I − P) = 0 exactly: a key in the
span of C's large-eigenvalue directions is mapped as before, and a preserved key k₀ moves by
ΔW P k₀ only, which the threshold keeps small.

The threshold: the paper keeps the directions with eigenvalues below about 1e-2 (on its models'
C); here the default is 1e-2 of the largest eigenvalue. The delta's details record, per layer,
the null space's dimension and the share of ordinary text's key energy it holds, tr(PC)/tr(C):
the share a preserved key's update is not blocked for.
"""

from __future__ import annotations

import torch

from .keyed import KeyedConfig
from .memit import Solve, spread_editor


def nullspace_projection(covariance: torch.Tensor, threshold: float) -> torch.Tensor:
    """P (d_k, d_k) fp64 = U Uᵀ, U the eigenvectors of C with eigenvalues below `threshold`
    times the largest."""
    values, vectors = torch.linalg.eigh(covariance.double())
    small = vectors[:, values < threshold * values.max()]
    return small @ small.T


def alphaedit_layer_update(keys: torch.Tensor, values: torch.Tensor, projection: torch.Tensor, ridge: float,
                           previous: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW (d, d_k) = R Kᵀ P ((K Kᵀ + K_p K_pᵀ) P + αI)⁻¹, α = `ridge` (absolute). keys (d_k, n),
    values R (d, n), previous K_p K_pᵀ (d_k, d_k) or None. Transposed, ΔWᵀ solves
    (P (K Kᵀ + K_p K_pᵀ) + αI) ΔWᵀ = P K Rᵀ, P being symmetric."""
    k, p = keys.double(), projection.double()
    moment = k @ k.T if previous is None else k @ k.T + previous.double()
    system = p @ moment + ridge * torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    return torch.linalg.solve(system, p @ k @ values.double().T).T.float()


def alphaedit_solver(covariances: dict[int, torch.Tensor], keyed: KeyedConfig,
                     previous: dict[int, torch.Tensor] | None = None) -> tuple[Solve, dict]:
    """(solve, details): each layer's projected update, from its C (and K_p K_pᵀ of earlier edits
    per layer, `previous`); details: the null spaces' dimensions and key-energy shares."""
    projections, dims, shares = {}, [], []
    for layer in sorted(covariances):
        c = covariances[layer].double()
        projections[layer] = nullspace_projection(c, keyed.nullspace_threshold)
        dims.append(round(float(projections[layer].trace())))
        shares.append(float((projections[layer] * c).sum() / c.trace()))
    if not all(dims):
        empty = [layer for layer, dim in zip(sorted(covariances), dims, strict=True) if dim == 0]
        raise ValueError(f"alphaedit: no eigenvalue of C below {keyed.nullspace_threshold} of the largest at "
                         f"layers {empty}: the null space is empty (raise editor.keyed.nullspace_threshold)")

    def solve(layer: int, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        c = covariances[layer]
        earlier = None if previous is None or layer not in previous else previous[layer].to(keys.device)
        return alphaedit_layer_update(keys, values, projections[layer].to(keys.device),
                                      keyed.nullspace_ridge * float(c.double().diagonal().mean()), earlier)

    return solve, {"nullspace_threshold": keyed.nullspace_threshold, "nullspace_dims": dims,
                   "nullspace_energy": shares}


alphaedit = spread_editor("alphaedit", alphaedit_solver)
