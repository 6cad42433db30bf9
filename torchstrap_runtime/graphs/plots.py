"""A PNG of learned graphs against the true one, drawn on the nodes' 2-D coordinates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .metrics import edge_precision_recall
from .operators import as_tensor


def plot_graph_comparison(coords: Any, W_true: Any, learned: dict[str, Any], out: str | Path) -> Path:
    """One panel for the true graph, one per learned graph: found edges green (width ~ weight), wrong ones red,
    missed ones dotted grey; each title gives precision, recall and F-score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    xy = as_tensor(coords)[0].detach().cpu().numpy()
    true = as_tensor(W_true)[0].detach().cpu().numpy() > 0
    rows, cols = np.triu_indices(len(xy), 1)
    segments = np.stack([xy[rows], xy[cols]], axis=1)
    panels = {"true graph": W_true, **learned}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    for ax, (name, W) in zip(np.atleast_1d(axes), panels.items()):
        weights = as_tensor(W)[0].detach().cpu().double().numpy()[rows, cols]
        est = weights > 0
        width = 0.4 + 2.0 * weights / max(weights.max(), 1e-300)
        t = true[rows, cols]
        ax.add_collection(LineCollection(segments[t & ~est], colors="0.6", linewidths=0.8, linestyles=":"))
        ax.add_collection(LineCollection(segments[t & est], colors="tab:green", linewidths=width[t & est]))
        ax.add_collection(LineCollection(segments[~t & est], colors="tab:red", linewidths=width[~t & est]))
        ax.scatter(xy[:, 0], xy[:, 1], s=8, c="k", zorder=3)
        if name == "true graph":
            ax.set_title(f"true graph ({int(t.sum())} edges)")
        else:
            p, r, f = edge_precision_recall(W_true, W)
            ax.set_title(f"{name}\nprecision {p:.2f}  recall {r:.2f}  F {f:.2f}", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
