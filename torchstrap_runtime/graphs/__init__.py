"""Graph learning in plain torch (any device, float32 or float64; numpy arrays or tensors in, the same kind out).

    from torchstrap_runtime.graphs import learn_smooth_graph, learn_k_component_graph, edge_f_score
    W = learn_smooth_graph(X, avg_degree=7)          # X: (nodes, signals); Kalofolias 2016 log model
    W = learn_smooth_graph(X, method="l2")           # Dong et al. 2016
    g = learn_k_component_graph(S, k=3)              # Kumar et al.: g.laplacian, g.adjacency, g.labels

Baselines (knn_graph, graphical_lasso_graph), metrics, synthetic graphs and signals, and the training-side
GraphLaplacianLoss / EpochGraphLearner live beside them; docs/graphs.md shows them at work.
"""

from .baselines import graphical_lasso_graph, knn_graph
from .metrics import component_labels, edge_f_score, edge_precision_recall, graph_stats, relative_error
from .operators import (degree_adjoint, degree_operator, laplacian, laplacian_adjoint, matrix_to_vec,
                        pairwise_sq_distances, vec_to_matrix)
from .smooth import SmoothGraphResult, degree_theta, fit_smooth_graph, learn_smooth_graph
from .structured import KComponentGraph, learn_k_component_graph
from .synthetic import (erdos_renyi_graph, gaussian_signals, k_component_graph, random_geometric_graph,
                        smooth_signals, stochastic_block_graph)
from .training import EpochGraphLearner, GraphLaplacianLoss

__all__ = [
    "learn_smooth_graph", "fit_smooth_graph", "SmoothGraphResult", "degree_theta",
    "learn_k_component_graph", "KComponentGraph", "knn_graph", "graphical_lasso_graph",
    "edge_f_score", "edge_precision_recall", "relative_error", "component_labels", "graph_stats",
    "laplacian", "laplacian_adjoint", "vec_to_matrix", "matrix_to_vec", "degree_operator", "degree_adjoint",
    "pairwise_sq_distances",
    "random_geometric_graph", "erdos_renyi_graph", "stochastic_block_graph", "k_component_graph",
    "gaussian_signals", "smooth_signals",
    "GraphLaplacianLoss", "EpochGraphLearner",
]
