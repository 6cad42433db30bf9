"""Baselines to compare learned graphs with: the k-nearest-neighbour graph and scikit-learn's GraphicalLasso."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .operators import as_tensor, like_input, pairwise_sq_distances


def knn_graph(X: Any, k: int) -> Any:
    """Binary symmetric kNN graph of the rows of X (nodes x signals): i ~ j when either is among the other's k nearest."""
    t, was_numpy = as_tensor(X)
    n = t.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and n - 1 = {n - 1}, got {k}")
    Z = pairwise_sq_distances(t)
    Z.fill_diagonal_(float("inf"))
    nearest = Z.topk(k, dim=1, largest=False).indices
    W = torch.zeros_like(Z).scatter_(1, nearest, 1.0)
    return like_input(torch.maximum(W, W.T), was_numpy)


def graphical_lasso_graph(X: Any, alpha: float = 0.01, max_iter: int = 200) -> Any:
    """Graph from scikit-learn's GraphicalLasso on X (nodes x signals): W_ij = max(0, -Theta_ij), Theta the precision.

    The signals are the samples; Theta's negative off-diagonal entries are the Laplacian-like couplings.
    """
    from sklearn.covariance import GraphicalLasso

    t, was_numpy = as_tensor(X)
    model = GraphicalLasso(alpha=alpha, max_iter=max_iter).fit(t.detach().cpu().double().numpy().T)
    W = np.clip(-model.precision_, 0, None)
    np.fill_diagonal(W, 0)
    W = torch.from_numpy((W + W.T) / 2).to(t.dtype).to(t.device)
    return like_input(W, was_numpy)
