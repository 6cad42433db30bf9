"""Graph learning: torchstrap_runtime.graphs against the published reference code, same iterations, same result.

  smoothness (log model, Kalofolias 2016)  ours: fit_smooth_graph (torch, dense n x n)
                                            reference: pyunlocbox's `mlfbf` primal-dual solver on the same
                                            objective, operators as in rodrigo-pena/graph-learning (sparse S)
  k-component (Kumar et al.)                ours: learn_k_component_graph (torch)
                                            reference: StructuredGraphLearning 0.0.4 from PyPI
                                            (LearnGraphTopology.learn_k_component_graph, numpy + loops)

Both pairs run a fixed number of iterations (tolerances 0, no edge threshold) on the same data: a random
geometric graph (average degree 7, 200 signals, 10 % noise) and four blocks of n/4 nodes (30 samples per node),
and their results are compared (largest weight difference / largest weight). The references are installed by
this script into bench/data/graph_refs (pip --target, no dependencies: numpy, scipy, tqdm are ours). One patch:
StructuredGraphLearning's optimizer.py imports `quadprog` at module level, used only by its "qp" start, and
quadprog has no wheel for this Python: the import is moved into that branch. Each reference run is given
--limit seconds (a child process, killed past it; reported as skipped). One thread for torch and for numpy's
BLAS (the machine is shared); float64 on the CPU.

It also draws docs/img/graphs_rgg.png (a learned graph against the true one).

    python bench/bench_graphs.py [--quick] [--sizes 100 200 500 1000] [--limit 240]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one thread each: the machine is shared; set before numpy loads
os.environ["TQDM_DISABLE"] = "1"  # SGL's progress bars (read when tqdm is imported)

import json
import multiprocessing as mp
import subprocess
import sys
import time

import numpy as np
import torch

from common import DATA_DIR, PYTHON, REPO_DIR, RESULTS_DIR, parser, write_results

sys.path.insert(0, str(REPO_DIR))
from torchstrap_runtime.graphs import (degree_theta, fit_smooth_graph, gaussian_signals,  # noqa: E402
                                       k_component_graph, learn_k_component_graph, matrix_to_vec,
                                       pairwise_sq_distances, random_geometric_graph)

REFS = DATA_DIR / "graph_refs"
SGL_OPTIMIZER = REFS / "StructuredGraphLearning" / "optimizer.py"


def install_references() -> None:
    """pip install the two references into bench/data/graph_refs and patch SGL's quadprog import."""
    if not (REFS / "pyunlocbox").exists() or not SGL_OPTIMIZER.exists():
        subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--target", str(REFS),
                        "StructuredGraphLearning==0.0.4", "pyunlocbox==0.6.1"], check=True)
    text = SGL_OPTIMIZER.read_text()
    if "from quadprog import solve_qp\n" in text.split("class Optimizer")[0]:
        text = text.replace("from quadprog import solve_qp\n", "", 1)
        text = text.replace("            if w0 == 'qp':\n", "            if w0 == 'qp':\n"
                            "                from quadprog import solve_qp  # patched: imported where used\n", 1)
        SGL_OPTIMIZER.write_text(text)
    sys.path.insert(0, str(REFS))


# ----------------------------------------------------------------------------- references

def reference_smooth(z: np.ndarray, n: int, alpha: float, beta: float, step: float, iterations: int) -> np.ndarray:
    from pyunlocbox import functions, solvers
    from scipy import sparse

    m = len(z)
    rows, cols = np.triu_indices(n, 1)
    S = sparse.csr_matrix((np.ones(2 * m), (np.concatenate([rows, cols]), np.tile(np.arange(m), 2))), shape=(n, m))
    a = alpha / 2
    f1 = functions.func()
    f1._eval = lambda w: w @ z
    f1._prox = lambda w, gamma: np.maximum(0, w - gamma * z)
    f2 = functions.func()
    f2._eval = lambda d: -a * np.sum(np.log(np.maximum(d, np.finfo(float).tiny)))
    f2._prox = lambda d, gamma: (d + np.sqrt(d * d + 4 * a * gamma)) / 2
    f3 = functions.func()
    f3._eval = lambda w: beta * np.sum(w * w)
    f3._grad = lambda w: 2 * beta * w
    solver = solvers.mlfbf(L=lambda w: S @ w, Lt=lambda d: S.T @ d, step=step)
    result = solvers.solve([f1, f2, f3], np.zeros(m), solver, maxit=iterations, rtol=0, verbosity="NONE")
    return result["sol"]


def reference_k_component(S: np.ndarray, k: int, beta: float, iterations: int) -> np.ndarray:
    from StructuredGraphLearning import LearnGraphTopology

    model = LearnGraphTopology(S, maxiter=iterations, abstol=0, reltol=0)
    return model.learn_k_component_graph(k=k, beta=beta)["w"]


def _child(queue, fn, args):
    start = time.perf_counter()
    out = fn(*args)
    queue.put((time.perf_counter() - start, out))


def run_limited(fn, args, limit: float):
    """(seconds, result) of fn(*args) in a forked child, or (None, None) past `limit` seconds."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue, fn, args))
    child.start()
    try:
        return queue.get(timeout=limit)
    except Exception:  # queue.Empty: past the limit
        return None, None
    finally:
        child.kill()
        child.join()


# ----------------------------------------------------------------------------- one size

def bench_smooth(n: int, iterations: int, limit: float) -> dict:
    W_true, _ = random_geometric_graph(n, 7.0, seed=0)
    X = gaussian_signals(W_true, 200, noise=0.1, seed=0)
    Z = pairwise_sq_distances(X)
    Z = degree_theta(Z, 7.0) * Z  # the problem avg_degree=7 solves: (alpha, beta) = (1, 1/2) on theta Z
    alpha, beta = 1.0, 0.5
    step = 0.5 / (2 * beta + np.sqrt(2 * (n - 1)))
    start = time.perf_counter()
    ours = fit_smooth_graph(None, alpha=alpha, beta=beta, edge_tol=0, max_iter=iterations, tol=0, distances=Z)
    t_ours = time.perf_counter() - start
    t_ref, w_ref = run_limited(reference_smooth, (matrix_to_vec(Z).numpy(), n, alpha, beta, step, iterations), limit)
    row = {"n": n, "iterations": iterations, "ours_s": t_ours, "reference_s": t_ref}
    if w_ref is not None:
        w = matrix_to_vec(ours.W).numpy()
        row["max_rel_diff"] = float(np.abs(w - w_ref).max() / np.abs(w_ref).max())
        row["ratio"] = t_ref / t_ours
    return row


def bench_k_component(n: int, iterations: int, limit: float) -> dict:
    W_true, _ = k_component_graph(4, n // 4, seed=0)
    X = gaussian_signals(W_true, 30 * n, seed=0)
    S = np.cov(X.numpy())
    start = time.perf_counter()
    ours = learn_k_component_graph(S, 4, beta=1e4, max_iter=iterations, reltol=0, abstol=0, edge_tol=0)
    t_ours = time.perf_counter() - start
    t_ref, w_ref = run_limited(reference_k_component, (S, 4, 1e4, iterations), limit)
    row = {"n": n, "iterations": iterations, "ours_s": t_ours, "reference_s": t_ref}
    if w_ref is not None:
        w = matrix_to_vec(torch.from_numpy(ours.adjacency)).numpy()
        row["max_rel_diff"] = float(np.abs(w - w_ref).max() / np.abs(w_ref).max())
        row["ratio"] = t_ref / t_ours
    return row


def show(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'nodes':>6} {'iters':>6} {'ours s':>9} {'reference s':>12} {'ratio':>8} {'max rel diff':>13}")
    for r in rows:
        ref = f"{r['reference_s']:.3f}" if r["reference_s"] is not None else "skipped"
        ratio = f"{r['ratio']:.1f}x" if "ratio" in r else "-"
        diff = f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else "-"
        print(f"{r['n']:>6} {r['iterations']:>6} {r['ours_s']:>9.3f} {ref:>12} {ratio:>8} {diff:>13}", flush=True)


def figure(out) -> None:
    """docs/img/graphs_rgg.png: the log model and the kNN graph against a 2-D random geometric graph."""
    from torchstrap_runtime.graphs import knn_graph, learn_smooth_graph
    from torchstrap_runtime.graphs.plots import plot_graph_comparison

    W_true, coords = random_geometric_graph(100, 7.0, seed=0)
    X = gaussian_signals(W_true, 200, noise=0.1, seed=0)
    learned = {"learn_smooth_graph(X, avg_degree=7)": learn_smooth_graph(X, avg_degree=7), "knn_graph(X, 7)": knn_graph(X, 7)}
    print(f"wrote {plot_graph_comparison(coords, W_true, learned, out)}")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--limit", type=float, default=240.0, help="seconds given to each reference run")
    p.add_argument("--smooth-iterations", type=int, default=300)
    p.add_argument("--k-iterations", type=int, default=20)
    p.add_argument("--parts", nargs="+", choices=["smooth", "k_component"], default=["smooth", "k_component"],
                   help="run only these (the other's earlier figures are kept in the results file)")
    args = p.parse_args()
    torch.set_num_threads(1)
    sizes = args.sizes or ([40, 100] if args.quick else [100, 200, 500, 1000])
    figure(REPO_DIR / "docs" / "img" / "graphs_rgg.png")
    install_references()
    name = "bench_graphs" + ("_quick" if args.quick else "")
    previous = RESULTS_DIR / f"{name}.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    results = {part: results[part] for part in ("smooth", "k_component") if part in results}
    if "smooth" in args.parts:
        results["smooth"] = [bench_smooth(n, args.smooth_iterations, args.limit) for n in sizes]
        show("smoothness (log model): ours vs pyunlocbox mlfbf", results["smooth"])
    if "k_component" in args.parts:
        results["k_component"] = [bench_k_component(n, args.k_iterations, args.limit) for n in sizes]
        show("k-component: ours vs StructuredGraphLearning 0.0.4", results["k_component"])
    write_results(name, {**results, "limit_s": args.limit, "torch_threads": 1, "device": "cpu", "dtype": "float64"})


if __name__ == "__main__":
    main()
