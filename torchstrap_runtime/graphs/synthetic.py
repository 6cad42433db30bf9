"""Synthetic graphs and graph signals for tests and benchmarks (seeded; float64 tensors).

Graphs come back as weighted adjacency matrices W (symmetric, non-negative, zero diagonal).
"""

from __future__ import annotations

import numpy as np
import torch

from .operators import laplacian


def _symmetric(upper: np.ndarray) -> torch.Tensor:
    W = np.triu(upper, 1)
    return torch.from_numpy(W + W.T)


def _weights(rng: np.random.Generator, n: int, weight_range: tuple[float, float]) -> np.ndarray:
    low, high = weight_range
    return rng.uniform(low, high, size=(n, n))


def random_geometric_graph(n: int, avg_degree: float = 7.0, dim: int = 2,
                           seed: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, coords): n points uniform in the unit cube, joined when closer than the radius giving avg_degree.

    Weights are exp(-d^2 / (2 sigma^2)) with sigma = radius / 2 (from 1 for touching points to about 0.14).
    """
    rng = np.random.default_rng(seed)
    coords = rng.uniform(size=(n, dim))
    d = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    iu = np.triu_indices(n, 1)
    n_edges = int(round(avg_degree * n / 2))
    radius = np.sort(d[iu])[n_edges - 1]
    W = np.where(d <= radius, np.exp(-d ** 2 / (2 * (radius / 2) ** 2)), 0.0)
    np.fill_diagonal(W, 0)
    return torch.from_numpy(W), torch.from_numpy(coords)


def erdos_renyi_graph(n: int, p: float, weight_range: tuple[float, float] = (1.0, 1.0),
                      seed: int | None = 0) -> torch.Tensor:
    """Each of the n(n-1)/2 edges present with probability p, weight uniform in weight_range."""
    rng = np.random.default_rng(seed)
    mask = rng.uniform(size=(n, n)) < p
    return _symmetric(mask * _weights(rng, n, weight_range))


def stochastic_block_graph(sizes: list[int], p_in: float, p_out: float,
                           weight_range: tuple[float, float] = (1.0, 1.0), seed: int | None = 0) -> torch.Tensor:
    """Blocks of the given sizes (nodes in order); an edge inside a block with probability p_in, across p_out."""
    rng = np.random.default_rng(seed)
    block = np.repeat(np.arange(len(sizes)), sizes)
    n = len(block)
    prob = np.where(block[:, None] == block[None, :], p_in, p_out)
    mask = rng.uniform(size=(n, n)) < prob
    return _symmetric(mask * _weights(rng, n, weight_range))


def k_component_graph(k: int, size: int, p: float = 1.0, weight_range: tuple[float, float] = (0.5, 1.5),
                      seed: int | None = 0) -> tuple[torch.Tensor, np.ndarray]:
    """(W, labels): k disconnected blocks of `size` nodes each, edges inside a block with probability p."""
    W = stochastic_block_graph([size] * k, p, 0.0, weight_range, seed)
    return W, np.repeat(np.arange(k), size)


def gaussian_signals(W: torch.Tensor, n_signals: int, noise: float = 0.0,
                     seed: int | None = 0) -> torch.Tensor:
    """(nodes, n_signals) samples of N(0, L^+) (the graph's Gaussian Markov field), plus noise x their std."""
    rng = np.random.default_rng(seed)
    L = laplacian(W.double()).numpy()
    eigval, eigvec = np.linalg.eigh(L)
    inv_sqrt = np.where(eigval > 1e-10 * max(eigval.max(), 1e-300), 1 / np.sqrt(np.abs(eigval)), 0.0)
    X = eigvec @ (inv_sqrt[:, None] * rng.standard_normal((len(eigval), n_signals)))
    X = X + noise * X.std() * rng.standard_normal(X.shape)
    return torch.from_numpy(X)


def smooth_signals(W: torch.Tensor, n_signals: int, tau: float = 1.0, noise: float = 0.0,
                   seed: int | None = 0) -> torch.Tensor:
    """(nodes, n_signals) white noise filtered by the heat kernel exp(-tau L), plus noise x their std."""
    rng = np.random.default_rng(seed)
    L = laplacian(W.double()).numpy()
    eigval, eigvec = np.linalg.eigh(L)
    X = eigvec @ (np.exp(-tau * eigval)[:, None] * (eigvec.T @ rng.standard_normal((len(eigval), n_signals))))
    X = X + noise * X.std() * rng.standard_normal(X.shape)
    return torch.from_numpy(X)
