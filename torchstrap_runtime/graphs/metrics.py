"""How close a learned graph is to the true one, and what a graph looks like (for logs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .operators import as_tensor, matrix_to_vec


def _edges(W: Any, threshold: float) -> torch.Tensor:
    t, _ = as_tensor(W)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"a graph is a square adjacency matrix, got shape {tuple(t.shape)}")
    return matrix_to_vec(t.detach().cpu()) > threshold


def edge_precision_recall(W_true: Any, W_est: Any, threshold: float = 0.0) -> tuple[float, float, float]:
    """(precision, recall, F-score) of the estimated edges; an edge is a weight above `threshold`."""
    true, est = _edges(W_true, threshold), _edges(W_est, threshold)
    if true.shape != est.shape:
        raise ValueError(f"the graphs differ in size: {tuple(true.shape)} and {tuple(est.shape)} edges")
    hits = int((true & est).sum())
    precision = hits / max(int(est.sum()), 1)
    recall = hits / max(int(true.sum()), 1)
    f_score = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f_score


def edge_f_score(W_true: Any, W_est: Any, threshold: float = 0.0) -> float:
    """F-score of the estimated edges against the true ones; an edge is a weight above `threshold`."""
    return edge_precision_recall(W_true, W_est, threshold)[2]


def relative_error(L_true: Any, L_est: Any) -> float:
    """||L_est - L_true||_F / ||L_true||_F."""
    a, _ = as_tensor(L_true, torch.float64)
    b, _ = as_tensor(L_est, torch.float64)
    a, b = a.detach().cpu(), b.detach().cpu()
    return float(torch.linalg.norm(b - a) / torch.linalg.norm(a))


def component_labels(W: Any, threshold: float = 0.0) -> np.ndarray:
    """Label of each node's connected component (0, 1, ... in order of first node), edges: weights > threshold."""
    from scipy.sparse import csr_matrix  # imported here: scipy is slow to import
    from scipy.sparse.csgraph import connected_components

    t, _ = as_tensor(W)
    adjacency = (t.detach().cpu() > threshold).numpy()
    _, labels = connected_components(csr_matrix(adjacency), directed=False)
    return labels


def graph_stats(W: Any, threshold: float = 0.0) -> dict[str, float]:
    """Edges, average degree, density, mean weight, connected components and isolated nodes of W."""
    t, _ = as_tensor(W)
    t = t.detach().cpu().double()
    n = t.shape[0]
    present = matrix_to_vec(t) > threshold
    edges = int(present.sum())
    weights = matrix_to_vec(t)[present]
    labels = component_labels(t, threshold)
    degree = ((t > threshold).sum(1) - (torch.diagonal(t) > threshold).long())
    return {"nodes": n, "edges": edges, "avg_degree": 2 * edges / n, "density": edges / max(n * (n - 1) / 2, 1),
            "mean_weight": float(weights.mean()) if edges else 0.0, "components": int(labels.max()) + 1 if n else 0,
            "isolated": int((degree == 0).sum())}
