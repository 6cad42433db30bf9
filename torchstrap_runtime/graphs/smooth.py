"""Learn a graph from smooth signals: Kalofolias 2016 (log degrees) and Dong et al. 2016 (l2 degrees).

Both models trade the smoothness ||W o Z||_1 = 2 tr(X' L X) (Z: pairwise squared distances between the rows
of X) against a prior on the weights, over symmetric non-negative W with zero diagonal:

    log: min ||W o Z||_1 - alpha 1' log(W 1) + beta ||W||_F^2
    l2:  min ||W o Z||_1 + alpha ||W 1||^2  + beta ||W||_F^2   s.t. sum(W) = n   (alpha = beta: ||L||_F^2)

Both are solved by the forward-backward-forward primal-dual method (Komodakis & Pesquet 2015) that Kalofolias
uses, on the edge variables (half the objective), each edge vector held as its symmetric n x n matrix so
that every step is a few dense passes on any device (one iteration shared by both, `_primal_dual_steps`).
`avg_degree` picks the sparsity by the automatic scaling of Kalofolias & Perraudin 2019 (log model only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .operators import as_tensor, like_input, pairwise_sq_distances

METHODS = ("log", "l2")


@dataclass
class SmoothGraphResult:
    """A learned graph: W (tensor), the iterations run, whether the tolerance was met, the (alpha, beta) used."""

    W: torch.Tensor
    iterations: int
    converged: bool
    alpha: float
    beta: float


def _outer_factors(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B = u_i + u_j: the outer sum as a rank-2 product, so addmm adds it in one pass."""
    ones = torch.ones_like(u)
    return torch.stack([u, ones], 1), torch.stack([ones, u], 0)


def _primal_dual_steps(Z: torch.Tensor, W: torch.Tensor, v: torch.Tensor, gamma: float, shrink: float,
                       forward: Callable, backward: Callable,
                       track_change: bool) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
    """The forward-backward-forward iteration both models share, on edge vectors held as n x n matrices.

    Primal: Y = shrink W - gamma S'a, P = max(0, Y - gamma z), Q = shrink P - gamma S'b, W <- W - Y + Q, where
    S'u (u_i + u_j off the diagonal) is added by addmm as a rank-2 product and P is kept as shrink * U so those
    adds need no scaling; W is updated in place (copy a yielded W to keep it). Dual: (a, y) = forward(v, W 1),
    (b, q) = backward(y, P 1), v <- v - y + q. track_change=False skips the primal change (yielded as None):
    two of the seven to nine passes over n x n an iteration makes.
    """
    gZ = gamma / shrink * Z
    tiny = torch.finfo(W.dtype).tiny
    U, D = torch.empty_like(W), torch.empty_like(W) if track_change else None
    d = W.sum(1)
    while True:
        a, y = forward(v, d)
        torch.sub(W, gZ, out=U).addmm_(*_outer_factors(-gamma / shrink * a)).clamp_min_(0).fill_diagonal_(0)
        b, q = backward(y, shrink * U.sum(1))
        factors = _outer_factors(gamma * (a - b))  # W - Y + Q = (1 - shrink) W + shrink P + gamma S'(a - b)
        rel_primal = None
        if D is not None:
            torch.sub(U, W, alpha=1 / shrink, out=D).addmm_(*factors, beta=shrink ** 2).fill_diagonal_(0)  # Q - Y
            rel_primal = torch.linalg.vector_norm(D) / torch.linalg.vector_norm(W).clamp_min(tiny)
            W.add_(D)
        else:
            W.addmm_(*factors, beta=1 - shrink).add_(U, alpha=shrink ** 2).fill_diagonal_(0)
        rel_dual = torch.linalg.vector_norm(q - y) / torch.linalg.vector_norm(v).clamp_min(tiny)
        v = v - y + q
        d = W.sum(1)
        yield W, rel_primal, rel_dual


def log_model_steps(Z: torch.Tensor, alpha: float, beta: float, W: torch.Tensor, step_size: float = 0.5,
                    track_change: bool = True) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
    """Yield (W, relative primal change, relative dual change) after each primal-dual iteration, log model.

    Edge form (w, z: upper triangles, S w = W 1): min z'w + i(w >= 0) - (alpha/2) sum log(S w) + beta ||w||^2;
    dual variable v on the degrees, step step_size / (2 beta + ||S||), 0 < step_size < 1. W is updated in
    place and the primal change skipped with track_change=False (see `_primal_dual_steps`).
    """
    n = Z.shape[0]
    gamma = step_size / (2 * beta + math.sqrt(2 * (n - 1)))
    tiny = torch.finfo(W.dtype).tiny
    W = W.clone()
    d = W.sum(1)  # warm start: the dual's optimum is the gradient of -(alpha/2) log at the degrees
    v = torch.where(d > 0, -alpha / 2 / d.clamp_min(tiny), torch.zeros_like(d))

    def forward(v: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return v, v + gamma * d

    def backward(y: torch.Tensor, degrees_P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = (y - torch.sqrt(y * y + 2 * gamma * alpha)) / 2  # prox of the conjugate of -(alpha/2) sum log
        return p, p + gamma * degrees_P

    return _primal_dual_steps(Z, W, v, gamma, 1 - 2 * gamma * beta, forward, backward, track_change)


def l2_model_steps(Z: torch.Tensor, alpha: float, beta: float, W: torch.Tensor, step_size: float = 0.5,
                   track_change: bool = True) -> Iterator[tuple[torch.Tensor, Any, torch.Tensor]]:
    """Yield (W, relative primal change, relative dual change) after each primal-dual iteration, l2 model.

    Edge form: min z'w + i(w >= 0) + (alpha/2) ||S w||^2 + beta ||w||^2 s.t. 2 sum(w) = n; the scalar dual
    variable v carries the constraint. The gradient alpha S'S w + 2 beta w joins the primal steps: the
    2 beta w part as the shrink factor, alpha S'(S w) with the dual's 2 v in the outer sums.
    """
    n = Z.shape[0]
    lipschitz = 2 * alpha * (n - 1) + 2 * beta  # of the smooth part's gradient, ||S||^2 = 2(n - 1)
    gamma = step_size / (lipschitz + 2 * math.sqrt(n * (n - 1) / 2))
    W = W.clone()

    def forward(v: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return alpha * d + v, v + gamma * d.sum()

    def backward(y: torch.Tensor, degrees_P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = y - gamma * n  # prox of the conjugate of the indicator of {n}
        return alpha * degrees_P + p, p + gamma * degrees_P.sum()

    return _primal_dual_steps(Z, W, W.sum(), gamma, 1 - 2 * gamma * beta, forward, backward, track_change)


def degree_theta(Z: torch.Tensor, avg_degree: float) -> float:
    """theta such that the log model on theta * Z with (alpha, beta) = (1, 1/2) gives about avg_degree edges per node.

    Kalofolias & Perraudin 2019: node i keeps exactly k edges for theta in [t_i(k+1), t_i(k)] with
    t_i(k) = 1 / sqrt(k z_k^2 - b_k z_k), z sorted row i (diagonal left out), b_k = z_1 + ... + z_k; the bounds
    are averaged over nodes and theta is their geometric mean (interpolated for a fractional degree).
    """
    n = Z.shape[0]
    if not 1 <= avg_degree <= n - 2:
        raise ValueError(f"avg_degree must be between 1 and n - 2 = {n - 2} for {n} nodes, got {avg_degree}")
    Zs = (Z + torch.diag(torch.full((n,), math.inf, dtype=Z.dtype, device=Z.device))).sort(1).values[:, :-1]
    Zs = Zs.double()
    k = torch.arange(1, n, dtype=Zs.dtype, device=Zs.device)
    gap = k * Zs ** 2 - Zs.cumsum(1) * Zs
    upper = (1 / gap.clamp_min(1e-300).sqrt()).mean(0)  # upper[k - 1]: above it, fewer than k edges

    def theta(kk: int) -> float:
        return float(upper[1] * 1.1) if kk == 1 else float(torch.sqrt(upper[kk - 1] * upper[kk]))

    low = int(math.floor(avg_degree))
    if low == avg_degree:
        return theta(low)
    frac = avg_degree - low
    return math.exp((1 - frac) * math.log(theta(low)) + frac * math.log(theta(low + 1)))


def _solve(Z: torch.Tensor, alpha: float, beta: float, W: torch.Tensor, method: str, max_iter: int,
           tol: float, step_size: float) -> tuple[torch.Tensor, int, bool]:
    steps = (log_model_steps if method == "log" else l2_model_steps)(Z, alpha, beta, W, step_size, tol > 0)
    it, converged = 0, False
    for it, (W, rel_primal, rel_dual) in enumerate(steps, start=1):
        if tol > 0 and bool(torch.maximum(rel_primal, rel_dual) < tol):
            converged = True
            break
        if it >= max_iter:
            break
    return (W + W.T) / 2, it, converged  # exactly symmetric: BLAS may round W[i, j] and W[j, i] apart


def _threshold(W: torch.Tensor, edge_tol: float) -> torch.Tensor:
    if edge_tol <= 0 or W.numel() == 0:
        return W
    return torch.where(W >= edge_tol * W.max(), W, torch.zeros_like(W))


def fit_smooth_graph(X: Any, avg_degree: float | None = None, alpha: float = 1.0, beta: float = 1.0,
                     edge_tol: float = 1e-2, max_iter: int = 2000, tol: float = 1e-5, w0: Any = None,
                     method: str = "log", step_size: float = 0.5, distances: Any = None) -> SmoothGraphResult:
    """`learn_smooth_graph` with the solver's report (iterations, convergence, the alpha and beta used)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if not 0 <= edge_tol < 1:
        raise ValueError(f"edge_tol must be in [0, 1) (a fraction of the largest weight), got {edge_tol}")
    if not 0 < step_size < 1:
        raise ValueError(f"step_size must be in (0, 1), got {step_size}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if method == "log" and (alpha <= 0 or beta <= 0):
        raise ValueError(f"the log model needs alpha > 0 and beta > 0, got alpha={alpha}, beta={beta}")
    if method == "l2" and avg_degree is not None:
        raise ValueError("avg_degree sets the sparsity of the log model (Kalofolias & Perraudin 2019); with "
                         "method='l2' choose alpha and beta instead (larger: denser)")
    if method == "l2" and (alpha < 0 or beta <= 0):
        raise ValueError(f"the l2 model needs alpha >= 0 and beta > 0, got alpha={alpha}, beta={beta}")
    if distances is None:
        Xt, _ = as_tensor(X)
        if Xt.ndim != 2 or Xt.shape[0] < 3:
            raise ValueError(f"X must be (nodes, signals) with at least 3 nodes, got shape {tuple(Xt.shape)}")
        Z = pairwise_sq_distances(Xt)
    else:
        Z, _ = as_tensor(distances)
        if Z.ndim != 2 or Z.shape[0] != Z.shape[1] or Z.shape[0] < 3:
            raise ValueError(f"distances must be a square matrix of at least 3 nodes, got {tuple(Z.shape)}")
    if not torch.isfinite(Z).all():
        raise ValueError("X (or distances) contains NaN or infinite values")
    n = Z.shape[0]
    W = torch.zeros_like(Z)
    if w0 is not None:
        W, _ = as_tensor(w0, Z.dtype)
        W = W.to(Z.device)
        if W.shape != Z.shape:
            raise ValueError(f"w0 must be {n} x {n} like the graph, got shape {tuple(W.shape)}")
        W = (W + W.T).clamp_min(0) / 2
        W.fill_diagonal_(0)

    if avg_degree is not None and method == "log":
        # W(Z, a, b) = sqrt(a / b) W(Z / sqrt(a b), 1, 1): the product sets the sparsity, the ratio the scale;
        # theta is derived for the paper's -log(W 1) + ||W||_F^2 / 2, i.e. (alpha, beta) = (1, 1/2) here
        ratio = alpha / beta
        theta = degree_theta(Z, avg_degree)
        scale = math.sqrt(ratio / 2)
        W, it, converged = _solve(theta * Z, 1.0, 0.5, W / scale, method, max_iter, tol, step_size)
        W = _threshold(W * scale, edge_tol)
        product = 1 / (2 * theta ** 2)
        return SmoothGraphResult(W, it, converged, math.sqrt(product * ratio), math.sqrt(product / ratio))
    W, it, converged = _solve(Z, alpha, beta, W, method, max_iter, tol, step_size)
    return SmoothGraphResult(_threshold(W, edge_tol), it, converged, alpha, beta)


def learn_smooth_graph(X: Any, avg_degree: float | None = None, alpha: float = 1.0, beta: float = 1.0,
                       edge_tol: float = 1e-2, max_iter: int = 2000, tol: float = 1e-5, w0: Any = None,
                       method: str = "log") -> Any:
    """Weighted adjacency W (n x n) learned from X (nodes x signals, numpy or tensor) under the smoothness model.

    method "log": Kalofolias 2016; "l2": Dong et al. 2016 (see the module docstring for both objectives).
    avg_degree (log model): ask for about this many neighbours per node instead of tuning alpha * beta
    (alpha / beta then only sets the weights' scale). edge_tol: weights below edge_tol x the largest weight become 0. max_iter,
    tol: the solver stops when both relative primal and dual changes fall below tol. w0: warm start (a previous
    W). W comes back as the same kind (numpy or tensor), dtype and device as X.
    """
    result = fit_smooth_graph(X, avg_degree, alpha, beta, edge_tol, max_iter, tol, w0, method)
    return like_input(result.W, not isinstance(X, torch.Tensor))
