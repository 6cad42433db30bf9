"""Linear operators between a graph's edge vector and its matrices, and the tensor conversions around them.

An undirected graph on n nodes has m = n(n-1)/2 possible edges; its edge vector w lists the weights of the
upper triangle row by row (the order of scipy's `squareform` and of `torch.triu_indices(n, n, 1)`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def as_tensor(x: Any, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, bool]:
    """(tensor, was_numpy): a float tensor of x (float64 for integer or float64 input, else x's float dtype)."""
    was_numpy = not isinstance(x, torch.Tensor)
    t = torch.as_tensor(np.asarray(x)) if was_numpy else x
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.float64
    return t.to(dtype), was_numpy


def like_input(t: torch.Tensor, was_numpy: bool) -> Any:
    """t back in the caller's kind: a numpy array when the input was one, else the tensor itself."""
    return t.detach().cpu().numpy() if was_numpy else t


def n_nodes(m: int) -> int:
    """The n with n(n-1)/2 = m (raises ValueError when m is not such a number)."""
    n = (1 + math.isqrt(1 + 8 * m)) // 2
    if n * (n - 1) // 2 != m:
        raise ValueError(f"an edge vector has n(n-1)/2 entries for some n; got {m}")
    return n


def edge_indices(n: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the upper-triangle edges, in edge-vector order."""
    rows, cols = torch.triu_indices(n, n, 1, device=device)
    return rows, cols


def vec_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """The symmetric zero-diagonal n x n matrix whose upper triangle is w."""
    n = n_nodes(w.shape[-1])
    rows, cols = edge_indices(n, w.device)
    W = w.new_zeros(n, n)
    W[rows, cols] = w
    return W + W.T


def matrix_to_vec(W: torch.Tensor) -> torch.Tensor:
    """The upper triangle of W (diagonal excluded) as an edge vector."""
    rows, cols = edge_indices(W.shape[0], W.device)
    return W[rows, cols]


def degree_operator(w: torch.Tensor) -> torch.Tensor:
    """S w: the node degrees W 1 of the graph with edge vector w."""
    n = n_nodes(w.shape[-1])
    rows, cols = edge_indices(n, w.device)
    return w.new_zeros(n).index_add_(0, rows, w).index_add_(0, cols, w)


def degree_adjoint(d: torch.Tensor) -> torch.Tensor:
    """S' d: the edge vector whose edge (i, j) holds d_i + d_j."""
    rows, cols = edge_indices(d.shape[0], d.device)
    return d[rows] + d[cols]


def laplacian(W: Any) -> Any:
    """L = diag(W 1) - W, same kind (numpy or tensor), dtype and device as W."""
    t, was_numpy = as_tensor(W)
    L = torch.diag(t.sum(1)) - t
    return like_input(L, was_numpy)


def laplacian_adjoint(M: torch.Tensor) -> torch.Tensor:
    """L* M: the adjoint of w -> L(w); edge (i, j) gets M_ii + M_jj - M_ij - M_ji."""
    rows, cols = edge_indices(M.shape[0], M.device)
    diag = torch.diagonal(M)
    return diag[rows] + diag[cols] - M[rows, cols] - M[cols, rows]


def pairwise_sq_distances(X: Any) -> Any:
    """Z_ij = ||x_i - x_j||^2 between the rows of X (nodes x signals), exactly 0 on the diagonal."""
    t, was_numpy = as_tensor(X)
    # differences, not the Gram-matrix shortcut: no cancellation, so float32 stays close to float64
    Z = torch.cdist(t, t, compute_mode="donot_use_mm_for_euclid_dist").square()
    return like_input(Z, was_numpy)
