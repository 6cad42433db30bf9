"""Structured graph learning: a k-component graph from a covariance or similarity matrix (Kumar et al. 2019/2020).

    min_{w >= 0, U, lambda}  tr(S L_w) - sum log(lambda) + beta/2 ||L_w - U diag(lambda) U'||_F^2
    with U'U = I (n x (n-k)), lb <= lambda_1 <= ... <= lambda_{n-k} <= ub

so that L_w has k zero eigenvalues: k connected components. Block majorization-minimization: an exact line
search on the projected gradient step in w, U the eigenvectors of the n-k largest eigenvalues of L_w, lambda
in closed form. Edge vectors are held as symmetric zero-diagonal n x n matrices (dense operations only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .metrics import component_labels
from .operators import as_tensor, like_input


@dataclass
class KComponentGraph:
    """A learned k-component graph: Laplacian, adjacency, component labels (numpy ints) and the solver's report."""

    laplacian: Any
    adjacency: Any
    labels: np.ndarray
    n_components: int
    iterations: int
    converged: bool
    beta: float


def _lap(A: torch.Tensor) -> torch.Tensor:
    return torch.diag(A.sum(1)) - A


def _lap_adjoint(M: torch.Tensor) -> torch.Tensor:
    """L* M as an edge matrix: (i, j) gets M_ii + M_jj - M_ij - M_ji, zero diagonal."""
    d = torch.diagonal(M)
    G = d[:, None] + d[None, :] - (M + M.T)  # grouped so that G is exactly symmetric
    return G.fill_diagonal_(0)


def _spectral_update(L: torch.Tensor, k: int, beta: float, lb: float,
                     ub: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, lambda, eigenvalues): eigenvectors of the n-k largest eigenvalues of L and their constrained lambda."""
    eigval, eigvec = torch.linalg.eigh(L)
    d = eigval[k:]
    lam = ((d + torch.sqrt(d * d + 4 / beta)) / 2).clamp(lb, ub)  # increasing in d: the order holds
    return eigvec[:, k:], lam, eigval


def k_component_steps(S: torch.Tensor, k: int, A: torch.Tensor, beta: float, lb: float = 0.0, ub: float = 1e10,
                      fix_beta: bool = True, rho: float = 1e-2, beta_max: float = 1e6,
                      eig_tol: float = 1e-9) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """Yield (adjacency, previous adjacency, beta) after each block-MM iteration, from the adjacency A."""
    L = _lap(A)
    U, lam, _ = _spectral_update(L, k, beta, lb, ub)
    while True:
        c = _lap_adjoint((U * lam) @ U.T - S / beta)
        grad = _lap_adjoint(L) - c
        M_grad = _lap_adjoint(_lap(grad))
        t = ((A * M_grad).sum() - (c * grad).sum()) / (grad * M_grad).sum()  # exact line search
        A_new = (A - t * grad).clamp_min(0)
        L = _lap(A_new)
        U, lam, eigval = _spectral_update(L, k, beta, lb, ub)
        if not fix_beta:
            zeros = int((eigval.abs() < eig_tol).sum())
            beta = min(beta * (1 + rho) if k <= zeros else beta / (1 + rho), beta_max)
        yield A_new, A, beta
        A = A_new


def learn_k_component_graph(S: Any, k: int, beta: float = 1e4, lb: float = 0.0, ub: float = 1e10,
                            max_iter: int = 10000, reltol: float = 1e-4, abstol: float = 1e-6, w0: Any = None,
                            fix_beta: bool = True, rho: float = 1e-2, beta_max: float = 1e6,
                            eig_tol: float = 1e-9, edge_tol: float = 1e-2) -> KComponentGraph:
    """A graph with k connected components learned from S (n x n covariance or similarity, numpy or tensor).

    beta: weight of the spectral constraint (larger: closer to exactly k components); fix_beta=False lets it
    grow by (1 + rho) while L has at least k zero eigenvalues (below eig_tol) and shrink otherwise, up to
    beta_max. lb, ub: bounds of the n-k non-zero eigenvalues. Stops when every weight moved less than
    reltol x its size or less than abstol. w0: a starting adjacency (default: the positive part of -pinv(S)).
    edge_tol: weights below edge_tol x the largest weight become 0 (the solver approaches zero slowly);
    labels: the connected components of what remains.
    laplacian and adjacency come back as the same kind, dtype and device as S.
    """
    St, was_numpy = as_tensor(S)
    n = St.shape[0]
    if St.ndim != 2 or St.shape[1] != n or n < 2:
        raise ValueError(f"S must be a square n x n matrix, got shape {tuple(St.shape)}")
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and n - 1 = {n - 1} components, got {k}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not torch.isfinite(St).all():
        raise ValueError("S contains NaN or infinite values")
    St = (St + St.T) / 2
    if w0 is None:
        A = (-torch.linalg.pinv(St, hermitian=True)).clamp_min(0)
    else:
        A, _ = as_tensor(w0, St.dtype)
        A = A.to(St.device)
        if A.shape != St.shape:
            raise ValueError(f"w0 must be {n} x {n} like S, got shape {tuple(A.shape)}")
    A = (A + A.T).clamp_min(0) / 2  # exactly symmetric (pinv's result is not)
    A.fill_diagonal_(0)

    it, converged = 0, False
    for it, (A, previous, beta) in enumerate(
            k_component_steps(St, k, A, beta, lb, ub, fix_beta, rho, beta_max, eig_tol), start=1):
        change = (A - previous).abs()
        converged = bool((change <= 0.5 * reltol * (A + previous)).all() or (change <= abstol).all())
        if converged or it >= max_iter:
            break
    A = torch.where(A >= edge_tol * A.max(), A, torch.zeros_like(A)) if edge_tol > 0 else A
    labels = component_labels(A)
    return KComponentGraph(like_input(_lap(A), was_numpy), like_input(A, was_numpy), labels,
                           int(labels.max()) + 1, it, converged, beta)
