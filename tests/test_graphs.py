"""Graph learning (torchstrap_runtime.graphs): invariants, numpy transcriptions of each solver's iteration,
recovery of known graphs, and the training-side loss and learner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.metrics import normalized_mutual_info_score

from torchstrap_runtime.criteria import build_criterion, list_criteria
from torchstrap_runtime.graphs import (EpochGraphLearner, GraphLaplacianLoss, component_labels, degree_adjoint,
                                       degree_operator, edge_f_score, edge_precision_recall, erdos_renyi_graph,
                                       fit_smooth_graph, gaussian_signals, graph_stats, graphical_lasso_graph,
                                       k_component_graph, knn_graph, laplacian, laplacian_adjoint,
                                       learn_k_component_graph, learn_smooth_graph, matrix_to_vec,
                                       pairwise_sq_distances, random_geometric_graph, relative_error,
                                       smooth_signals, stochastic_block_graph, vec_to_matrix)
from torchstrap_runtime.graphs.smooth import l2_model_steps, log_model_steps
from torchstrap_runtime.graphs.structured import k_component_steps


@pytest.fixture
def one_thread():
    """Small dense problems run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rgg():
    W, coords = random_geometric_graph(100, avg_degree=7.0, seed=0)
    X = gaussian_signals(W, 200, noise=0.1, seed=0)
    return W, X


def assert_valid_adjacency(W):
    W = torch.as_tensor(W)
    assert torch.equal(W, W.T) and (W >= 0).all() and (torch.diagonal(W) == 0).all()
    assert torch.allclose(laplacian(W) @ torch.ones(len(W), dtype=W.dtype), torch.zeros(len(W), dtype=W.dtype),
                          atol=1e-9)


# ----------------------------------------------------------------------------- operators and invariants

def test_operators_are_adjoint_and_invert():
    gen = torch.Generator().manual_seed(0)
    n = 7
    w = torch.rand(n * (n - 1) // 2, generator=gen, dtype=torch.float64)
    d = torch.rand(n, generator=gen, dtype=torch.float64)
    M = torch.rand(n, n, generator=gen, dtype=torch.float64)
    W = vec_to_matrix(w)
    assert torch.equal(matrix_to_vec(W), w) and torch.equal(W, W.T)
    assert torch.allclose(degree_operator(w), W.sum(1))
    assert torch.allclose(degree_operator(w) @ d, w @ degree_adjoint(d))
    assert torch.allclose((laplacian(W) * M).sum(), w @ laplacian_adjoint(M))
    X = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    Z = pairwise_sq_distances(X)
    assert torch.allclose(Z, torch.cdist(X, X) ** 2) and (torch.diagonal(Z) == 0).all()
    assert isinstance(laplacian(W.numpy()), np.ndarray)
    with pytest.raises(ValueError, match="n\\(n-1\\)/2 entries"):
        vec_to_matrix(torch.ones(4))


def test_learned_graphs_are_valid_adjacencies(rgg):
    W_true, X = rgg
    for W in (learn_smooth_graph(X, avg_degree=7), learn_smooth_graph(X, method="l2"),
              knn_graph(X, 7), graphical_lasso_graph(X[:20], 0.1),
              learn_k_component_graph(np.cov(X[:30].numpy()), 2, max_iter=50).adjacency):
        assert_valid_adjacency(W)


def test_kind_dtype_and_errors(rgg):
    _, X = rgg
    W = learn_smooth_graph(X.numpy().astype(np.float32), avg_degree=5, max_iter=50)
    assert isinstance(W, np.ndarray) and W.dtype == np.float32
    W = learn_smooth_graph(X.float(), avg_degree=5, max_iter=50)
    assert isinstance(W, torch.Tensor) and W.dtype == torch.float32
    with pytest.raises(ValueError, match="method must be one of 'log', 'l2', got 'l1'"):
        learn_smooth_graph(X, method="l1")
    with pytest.raises(ValueError, match="avg_degree must be between 1 and n - 2 = 98"):
        learn_smooth_graph(X, avg_degree=200)
    with pytest.raises(ValueError, match="w0 must be 100 x 100"):
        learn_smooth_graph(X, w0=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="with method='l2' choose alpha and beta"):
        learn_smooth_graph(X, method="l2", avg_degree=7)
    with pytest.raises(ValueError, match="alpha > 0 and beta > 0"):
        learn_smooth_graph(X, alpha=0)
    with pytest.raises(ValueError, match="k must be between 1 and n - 1 = 4"):
        learn_k_component_graph(np.eye(5), 5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        learn_smooth_graph(np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="S contains NaN"):
        learn_k_component_graph(np.full((5, 5), np.inf), 2)


# ----------------------------------------------------------------------------- numpy transcriptions

def numpy_operators(n):
    """Dense S (degrees) and edge pairs, written from the definitions."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    S = np.zeros((n, len(pairs)))
    for e, (i, j) in enumerate(pairs):
        S[i, e] = S[j, e] = 1
    return pairs, S


def numpy_log_model(z, alpha, beta, n, iterations, step=0.5):
    """Kalofolias' FBF primal-dual on edge vectors (z'w - alpha/2 sum log(Sw) + beta ||w||^2)."""
    _, S = numpy_operators(n)
    gamma = step / (2 * beta + np.sqrt(2 * (n - 1)))
    w = np.zeros_like(z)
    v = S @ w
    out = []
    for _ in range(iterations):
        Y = w - gamma * (2 * beta * w + S.T @ v)
        y = v + gamma * (S @ w)
        P = np.maximum(0, Y - gamma * z)
        a = alpha / 2  # prox of c g* by Moreau: y - c prox_{g/c}(y/c), prox of -a log: (u + sqrt(u^2 + 4a/c)) / 2
        p = y - gamma * (y / gamma + np.sqrt((y / gamma) ** 2 + 4 * a / gamma)) / 2
        Q = P - gamma * (2 * beta * P + S.T @ p)
        q = p + gamma * (S @ P)
        w, v = w - Y + Q, v - y + q
        out.append(w.copy())
    return out


def numpy_l2_model(z, alpha, beta, n, iterations, step=0.5):
    """FBF primal-dual for z'w + alpha/2 ||Sw||^2 + beta ||w||^2 s.t. 2 sum(w) = n."""
    _, S = numpy_operators(n)
    m = len(z)
    gamma = step / (alpha * np.linalg.norm(S, 2) ** 2 + 2 * beta + 2 * np.sqrt(m))
    w, v = np.zeros(m), 0.0
    grad = lambda u: alpha * S.T @ (S @ u) + 2 * beta * u  # noqa: E731
    out = []
    for _ in range(iterations):
        Y = w - gamma * (grad(w) + 2 * v)
        y = v + gamma * 2 * w.sum()
        P = np.maximum(0, Y - gamma * z)
        p = y - gamma * n
        Q = P - gamma * (grad(P) + 2 * p)
        q = p + gamma * 2 * P.sum()
        w, v = w - Y + Q, v - y + q
        out.append(w.copy())
    return out


@pytest.mark.parametrize("model", ["log", "l2"])
def test_smooth_solvers_match_numpy_transcription(model):
    n = 9
    X = torch.from_numpy(np.random.default_rng(1).standard_normal((n, 5)))
    Z = pairwise_sq_distances(X)
    z = matrix_to_vec(Z).numpy()
    alpha, beta = (1.5, 0.7) if model == "log" else (0.8, 0.6)
    reference = (numpy_log_model if model == "log" else numpy_l2_model)(z, alpha, beta, n, 60)
    steps = (log_model_steps if model == "log" else l2_model_steps)(Z, alpha, beta, torch.zeros_like(Z))
    for expected, (W, _, _) in zip(reference, steps):
        assert np.allclose(matrix_to_vec(W).numpy(), expected, rtol=1e-10, atol=1e-12)
    assert np.abs(reference[-1] - reference[-2]).max() > 0  # still moving: 60 steps really compared


def numpy_k_component(S, k, w, beta, iterations):
    """Kumar et al.'s block MM with the operators written as loops over edges (L, L*), exact line search."""
    n = len(S)
    pairs, _ = numpy_operators(n)

    def L(w):
        M = np.zeros((n, n))
        for e, (i, j) in enumerate(pairs):
            M[i, j] = M[j, i] = -w[e]
        M[np.diag_indices(n)] = -M.sum(1)
        return M

    def Lstar(M):
        return np.array([M[i, i] + M[j, j] - M[i, j] - M[j, i] for i, j in pairs])

    def spectral(Lw):
        values, vectors = np.linalg.eigh(Lw)
        d = values[k:]
        return vectors[:, k:], (d + np.sqrt(d ** 2 + 4 / beta)) / 2

    U, lam = spectral(L(w))
    out = []
    for _ in range(iterations):
        c = Lstar(U @ np.diag(lam) @ U.T - S / beta)
        g = Lstar(L(w)) - c
        Mg = Lstar(L(g))
        t = (w @ Mg - c @ g) / (g @ Mg)
        w = np.maximum(0, w - t * g)
        U, lam = spectral(L(w))
        out.append(w.copy())
    return out


def test_k_component_matches_numpy_transcription():
    W_true, _ = k_component_graph(2, 5, seed=3)
    S = np.cov(gaussian_signals(W_true, 200, seed=3).numpy())
    A0 = np.clip(-np.linalg.pinv(S), 0, None)
    np.fill_diagonal(A0, 0)
    reference = numpy_k_component(S, 2, matrix_to_vec(torch.from_numpy(A0)).numpy(), 100.0, 40)
    steps = k_component_steps(torch.from_numpy(S), 2, torch.from_numpy(A0), 100.0)
    for expected, (A, _, _) in zip(reference, steps):
        assert np.allclose(matrix_to_vec(A).numpy(), expected, rtol=1e-8, atol=1e-10)
    assert np.abs(reference[-1] - reference[-2]).max() > 0


# ----------------------------------------------------------------------------- recovery of known graphs

def test_random_geometric_graph_recovery(rgg):
    W_true, X = rgg
    true_edges = graph_stats(W_true)["edges"]
    degree = 2 * true_edges / len(W_true)
    W = learn_smooth_graph(X, avg_degree=degree)
    f_learned = edge_f_score(W_true, W)
    f_knn = edge_f_score(W_true, knn_graph(X, round(degree)))
    print(f"F-score learned {f_learned:.3f}, kNN {f_knn:.3f}; edges {graph_stats(W)['edges']} (asked {true_edges})")
    assert f_learned >= 0.80 and f_learned >= f_knn + 0.03
    assert abs(graph_stats(W)["edges"] - true_edges) <= 0.2 * true_edges


def test_edge_tol_and_warm_start(rgg):
    W_true, X = rgg
    raw = fit_smooth_graph(X, avg_degree=7, edge_tol=0.0)
    cleaned = fit_smooth_graph(X, avg_degree=7)
    assert graph_stats(raw.W)["edges"] > graph_stats(cleaned.W)["edges"]
    assert edge_f_score(W_true, cleaned.W) > edge_f_score(W_true, raw.W)
    warm = fit_smooth_graph(X, avg_degree=7, w0=cleaned.W)
    assert warm.converged and warm.iterations < cleaned.iterations / 2
    assert edge_f_score(cleaned.W, warm.W) > 0.98


def test_four_blocks_k_component(one_thread):
    W_true, labels = k_component_graph(4, 10, seed=0)
    X = gaussian_signals(W_true, 30 * 40, seed=0)  # 30 samples per node
    graph = learn_k_component_graph(np.cov(X.numpy()), 4)
    f = edge_f_score(W_true, graph.adjacency)
    err = relative_error(laplacian(W_true), graph.laplacian)
    print(f"F-score {f:.3f}, relative error {err:.3f}, components {graph.n_components}, {graph.iterations} iterations")
    assert f >= 0.95 and err <= 0.25 and graph.n_components == 4
    assert normalized_mutual_info_score(labels, graph.labels) == pytest.approx(1.0)


def test_iris_three_components(one_thread):
    x, y = load_iris(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    S = x @ x.T  # tr(S L) = sum_ij W_ij ||x_i - x_j||^2 / 2: a similarity, scaled to 1 for beta's sake
    graph = learn_k_component_graph(S / np.abs(S).max(), 3, beta=0.25, fix_beta=False, reltol=1e-3)
    nmi = normalized_mutual_info_score(y, graph.labels)
    print(f"iris: {graph.n_components} components, NMI {nmi:.3f}, {graph.iterations} iterations")
    assert graph.n_components == 3 and nmi >= 0.70


def test_float32_matches_float64(rgg):
    _, X = rgg
    W64 = learn_smooth_graph(X, avg_degree=7, edge_tol=0.0, tol=0.0, max_iter=400)
    W32 = learn_smooth_graph(X.float(), avg_degree=7, edge_tol=0.0, tol=0.0, max_iter=400)
    gap = (W32.double() - W64).abs().max().item()
    print(f"float32 vs float64: max |dW| = {gap:.2e}")
    assert W32.dtype == torch.float32 and gap <= 1e-5


# ----------------------------------------------------------------------------- baselines, metrics, generators

def test_metrics_and_generators():
    W = erdos_renyi_graph(30, 0.2, seed=1)
    assert_valid_adjacency(W)
    assert edge_precision_recall(W, W) == (1.0, 1.0, 1.0)
    half = W.clone()
    half[half > 0] = half[half > 0] * torch.tensor([1.0, 0.0]).repeat(1000)[: int((half > 0).sum())]
    half = torch.minimum(half, half.T)
    assert edge_precision_recall(W, half)[0] == 1.0 and edge_precision_recall(W, half)[1] < 1.0
    assert edge_f_score(W, 0.5 * W, threshold=0.6) != 1.0  # the threshold applies to both graphs
    blocks = stochastic_block_graph([5, 5, 5], 1.0, 0.0)
    assert list(component_labels(blocks)) == [0] * 5 + [1] * 5 + [2] * 5
    assert graph_stats(blocks)["components"] == 3 and graph_stats(blocks)["edges"] == 30
    rgg, coords = random_geometric_graph(50, avg_degree=6, seed=2)
    assert graph_stats(rgg)["avg_degree"] == pytest.approx(6.0, abs=0.05) and coords.shape == (50, 2)
    assert relative_error(laplacian(W), laplacian(W)) == 0.0
    X = smooth_signals(rgg, 40, tau=2.0, seed=0)
    L = laplacian(rgg)
    white = torch.from_numpy(np.random.default_rng(0).standard_normal(X.shape))
    assert torch.trace(X.T @ L @ X) / X.square().sum() < torch.trace(white.T @ L @ white) / white.square().sum()


# ----------------------------------------------------------------------------- training side

def test_graph_laplacian_loss():
    assert "graph_laplacian" in list_criteria()
    loss_fn = build_criterion("graph_laplacian")
    assert isinstance(loss_fn, GraphLaplacianLoss) and loss_fn.input_kind == "custom"
    W = erdos_renyi_graph(8, 0.5, weight_range=(0.5, 2.0), seed=0)
    E = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    expected = sum(W[i, j] * (E[i] - E[j]).square().sum() for i in range(8) for j in range(i + 1, 8)) / 8
    assert torch.allclose(loss_fn(E, laplacian(W)), expected)
    with pytest.raises(ValueError, match="has no graph"):
        loss_fn(E)
    loss_fn.set_graph(W)
    loss = loss_fn(E)
    loss.backward()
    assert torch.allclose(loss, expected) and E.grad is not None
    assert "laplacian" not in loss_fn.state_dict()
    with pytest.raises(ValueError, match="the Laplacian is \\(8, 8\\) but there are 3 embeddings"):
        loss_fn(E[:3])
    assert build_criterion("graph_laplacian", {"normalize": True}).normalize is True


def test_epoch_graph_learner_warm_starts(rgg):
    W_true, X = rgg
    learner = EpochGraphLearner(avg_degree=7, normalize=False, max_iter=2000)
    first = learner.update(X.float())
    second = learner.update(X.float() + 0.01 * torch.randn_like(X.float()))
    assert first["graph_edges"] > 0 and "graph_edge_f_vs_previous" in second
    assert second["graph_iterations"] < first["graph_iterations"] and second["graph_edge_f_vs_previous"] > 0.9
    loss_fn = build_criterion("graph_laplacian")
    loss_fn.set_graph(learner.W)
    assert loss_fn(X.float()) > 0 and learner.laplacian.shape == (100, 100)


def test_graph_hooks_of_the_metric_learning_experiment(tmp_path, task_trainer):
    """The generated metric-learning experiment's graph hooks (graph.learn), on in-memory data: the graph is
    logged per epoch and its loss joins the training loss."""
    from torchstrap_runtime.config import reset_config, set_values
    from torchstrap_runtime.evaluation import KNNValLoader
    from torchstrap_runtime.loggers import read_log
    from torchstrap_runtime.models import MLP, EmbeddingNet

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 4
    x = torch.randn(4, 3, 8, 8, generator=gen)[labels] + 0.5 * torch.randn(96, 3, 8, 8, generator=gen)
    data = [(x[i:i + 32], labels[i:i + 32]) for i in range(0, 96, 32)]

    class Experiment(task_trainer("metric-learning")):
        def initialize_model(self) -> None:
            self.model = EmbeddingNet(MLP(192, hidden=(32,), num_classes=0), embedding_dim=16)

        def initialize_train_loader(self) -> None:
            self.train_loader = data

        def initialize_val_loader(self) -> None:
            self.val_loader = KNNValLoader(data, bank=data)

    try:
        set_values({"logging.folder": str(tmp_path), "logging.progress": False, "logging.log_every": 0,
                    "criterion.name": "TripletMarginLoss", "criterion.miner": "", "training.epochs": 3,
                    "logging.run_id": "off", "evaluation.knn_k": 5, "scheduler.warmup_epochs": 0.0})
        Experiment().run()
        off = [r for r in read_log(tmp_path / "off") if r.get("kind") == "epoch"]
        assert not any("graph_edges" in r for r in off)  # off by default
        set_values({"graph.learn": True, "graph.loss_weight": 0.1, "logging.run_id": "on"})
        Experiment().run()
        epochs = [r for r in read_log(tmp_path / "on") if r.get("kind") == "epoch"]
        assert len(epochs) == 3 and all(r["graph_nodes"] == 32 and r["graph_edges"] > 0 for r in epochs)
        assert "graph_edge_f_vs_previous" in epochs[1] and all(np.isfinite(r["train_loss"]) for r in epochs)
        # epoch 1 has no graph yet (same loss as off); from epoch 2 on the graph loss joins the training loss
        assert epochs[0]["train_loss"] == pytest.approx(off[0]["train_loss"], rel=1e-6)
        assert epochs[1]["train_loss"] != pytest.approx(off[1]["train_loss"], rel=1e-3)
    finally:
        reset_config(keep_sections=True)
