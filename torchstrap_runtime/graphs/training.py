"""Graphs inside training: a Laplacian smoothness loss on embeddings, and a per-epoch graph learner.

    learner = EpochGraphLearner(avg_degree=8)              # once
    stats = learner.update(model(probe_inputs).detach())    # after each epoch: warm-started W, its statistics
    loss = loss + weight * graph_loss(model(probe_inputs), learner.laplacian)   # optional, in train_step
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .metrics import edge_f_score, graph_stats
from .operators import laplacian
from .smooth import fit_smooth_graph


class GraphLaplacianLoss(nn.Module):
    """tr(E' L E) / n = sum_{i<j} W_ij ||e_i - e_j||^2 / n for embeddings E (n x d) of the graph's n nodes.

    L is given at the call, or set beforehand with `set_graph(W)` (kept as a non-persistent buffer, since
    its size is the experiment's choice). Built by build_criterion("graph_laplacian").
    """

    input_kind = "custom"

    def __init__(self, normalize: bool = False):
        """normalize: use unit-norm embeddings (the loss then ignores their scale)."""
        super().__init__()
        self.normalize = normalize
        self.register_buffer("laplacian", None, persistent=False)

    def set_graph(self, W: Any) -> None:
        """Store the Laplacian of adjacency W (numpy or tensor) for calls that give none."""
        W = torch.as_tensor(W)
        if W.ndim != 2 or W.shape[0] != W.shape[1]:
            raise ValueError(f"set_graph needs a square adjacency matrix, got shape {tuple(W.shape)}")
        self.laplacian = laplacian(W.detach())

    def forward(self, embeddings: torch.Tensor, laplacian: torch.Tensor | None = None) -> torch.Tensor:
        L = self.laplacian if laplacian is None else laplacian
        if L is None:
            raise ValueError("GraphLaplacianLoss has no graph: pass laplacian=... or call set_graph(W) first")
        E = embeddings.flatten(1)
        if L.shape != (E.shape[0], E.shape[0]):
            raise ValueError(f"the Laplacian is {tuple(L.shape)} but there are {E.shape[0]} embeddings")
        if self.normalize:
            E = nn.functional.normalize(E, dim=1)
        L = L.to(device=E.device, dtype=E.dtype)
        return (E * (L @ E)).sum() / E.shape[0]


class EpochGraphLearner:
    """Learns a graph over the same n samples' embeddings once per epoch, warm-started from the last one.

    `update(E)` runs learn_smooth_graph on the detached embeddings E (n x d), keeps W and returns the graph's
    statistics (prefixed "graph_") for self.log; `laplacian` is L of the current W (None before the first).
    """

    def __init__(self, avg_degree: float = 8.0, method: str = "log", max_iter: int = 500, tol: float = 1e-5,
                 edge_tol: float = 1e-2, normalize: bool = True):
        """normalize: learn from unit-norm embeddings (distances then do not drift with the embeddings' scale)."""
        self.avg_degree, self.method, self.max_iter, self.tol = avg_degree, method, max_iter, tol
        self.edge_tol, self.normalize = edge_tol, normalize
        self.W: torch.Tensor | None = None

    @property
    def laplacian(self) -> torch.Tensor | None:
        return None if self.W is None else laplacian(self.W)

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor) -> dict[str, float]:
        E = embeddings.detach().flatten(1).float()
        if self.normalize:
            E = nn.functional.normalize(E, dim=1)
        warm = self.W if self.W is not None and self.W.shape[0] == E.shape[0] else None
        result = fit_smooth_graph(E, avg_degree=self.avg_degree, edge_tol=self.edge_tol, max_iter=self.max_iter,
                                  tol=self.tol, w0=warm, method=self.method)
        stats = {f"graph_{k}": v for k, v in graph_stats(result.W).items()}
        stats.update(graph_iterations=result.iterations, graph_converged=result.converged,
                     graph_smoothness=float((result.W * torch.cdist(E, E).square()).sum() / 2 / E.shape[0]))
        if warm is not None:
            stats["graph_edge_f_vs_previous"] = edge_f_score(warm, result.W)
        self.W = result.W
        return stats
