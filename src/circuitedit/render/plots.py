"""Figures (matplotlib, Agg backend): the localization heatmap and the causal-tracing picture."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ..models.components import HEAD, Component

GROUP_ORDER = ("subject", "last", "all")
GROUP_TITLES = {"subject": "subject tokens", "last": "last token", "all": "all positions"}


def _grid(result, group: str, num_layers: int, num_heads: int) -> np.ndarray:
    grid = np.full((num_layers, num_heads + 1), np.nan)
    for item in result.scores:
        if item.position != group:
            continue
        comp = item.component
        col = comp.head if comp.kind == HEAD else num_heads
        grid[comp.layer, col] = item.score
    return grid


def localization_heatmap(result, path: Path, *, num_layers: int | None = None, num_heads: int | None = None,
                         selected: list[Component] | None = None, title: str = "") -> Path:
    """Layers x (heads + an MLP column), one panel per position group; selected cells boxed.

    Colours: signed score on a symmetric red/blue scale per panel; grey = not scored; cells whose
    |score| is under 1% of the panel's largest are left unlabelled.
    """
    comps = [s.component for s in result.scores]
    num_layers = num_layers or (max((c.layer for c in comps), default=0) + 1)
    num_heads = num_heads if num_heads is not None else max((c.head + 1 for c in comps if c.kind == HEAD), default=0)
    present = {s.position for s in result.scores}
    groups = [g for g in GROUP_ORDER if g in present] + sorted(present - set(GROUP_ORDER))
    best_group: dict = {}  # a selected component is boxed in the panel of its largest |score|
    for item in result.scores:
        old = best_group.get(item.component)
        if old is None or abs(item.score) > abs(old.score):
            best_group[item.component] = item
    selected = set(selected or [])
    cols = num_heads + 1
    cell_w, cell_h = (0.55, 0.36) if num_layers * cols <= 240 else (0.3, 0.2)
    fig_w = max(4.0, cols * cell_w + 1.8)
    fig_h = max(3.0, num_layers * cell_h + 1.6)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(fig_w * max(1, len(groups)), fig_h), squeeze=False)
    annotate = num_layers * cols <= 240
    for ax, group in zip(axes[0], groups, strict=False):
        grid = _grid(result, group, num_layers, num_heads)
        finite = np.abs(grid[np.isfinite(grid)])
        vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(cols), [f"H{h}" for h in range(num_heads)] + ["MLP"], fontsize=8)
        ax.set_yticks(range(num_layers), [f"L{layer}" for layer in range(num_layers)], fontsize=8)
        ax.set_xlabel("head / MLP")
        ax.set_ylabel("layer")
        ax.axvline(num_heads - 0.5, color="black", linewidth=1.2)
        ax.set_title(GROUP_TITLES.get(group, group), fontsize=10)
        if annotate:
            for (layer, col), value in np.ndenumerate(grid):
                if np.isfinite(value) and abs(value) >= 0.01 * vmax:
                    strong = abs(value) > 0.6 * vmax
                    ax.text(col, layer, f"{value:.2g}", ha="center", va="center", fontsize=6,
                            color="white" if strong else "black")
        for comp in selected:
            col = comp.head if comp.kind == HEAD else num_heads
            if comp in best_group and best_group[comp].position == group:
                ax.add_patch(Rectangle((col - 0.5, comp.layer - 0.5), 1, 1, fill=False, edgecolor="black",
                                       linewidth=2.0))
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, label="score")
    suptitle = title or f"{result.method} localization"
    if selected:
        suptitle += "  (boxed: selected)"
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def causal_trace_figure(trace: dict, path: Path, title: str = "") -> Path:
    """The ROME picture: indirect effect of restoring hidden state / MLP / attention, token x layer."""
    kinds = [k for k in ("hidden", "mlp", "attn") if k in trace]
    labels = {"hidden": "hidden state", "mlp": "MLP output", "attn": "attention output"}
    tokens = [repr(t)[1:-1] for t in trace.get("tokens", [str(p) for p in trace["positions"]])]
    subject = set(trace.get("subject_positions", []))
    tokens = [f"{t}*" if p in subject else t for t, p in zip(tokens, trace["positions"], strict=True)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 0.45 * len(tokens) + 2.0), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        grid = np.array(trace[kind]).T  # (positions, layers)
        vmax = float(np.abs(grid).max()) or 1.0
        image = ax.imshow(grid, cmap="Purples" if kind == "hidden" else ("Greens" if kind == "mlp" else "Reds"),
                          vmin=min(0.0, float(grid.min())), vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
        ax.set_xticks(range(0, grid.shape[1], max(1, grid.shape[1] // 10)))
        ax.set_xlabel("layer")
        ax.set_title(f"restore {labels[kind]}", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03, label="p(old) restored - corrupted")
    fig.suptitle((title or "causal trace") + f"  (p clean {trace['p_clean']:.3f}, corrupted {trace['p_corrupt']:.3f};"
                 " * = subject token)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
