"""Criteria: any torch.nn / pytorch-metric-learning loss by name, CoKe, the SSL baselines, and embedding evaluation.

    from torchstrap_runtime.criteria import build_criterion, list_criteria
    criterion = build_criterion("TripletMarginLoss", {"margin": 0.1}, miner="TripletMarginMiner")
    criterion.input_kind   # "embeddings_labels" -> criterion(embeddings, labels)
"""

from ..methods.coke import CoKeDoubleView, CoKeMultiView, CoKeSingleView
from .eval import knn_accuracy, knn_predict, linear_probe_accuracy, nmi, precision_at_1
from .registry import (accepted_params, build_criterion, check_input_kind, describe, list_criteria, list_miners,
                       pml_losses, pml_miners, resolve, torch_losses)
from .wrappers import INPUT_KINDS, AdaptiveSoftmaxLoss, MetricLoss, ViewsLoss

__all__ = [
    "build_criterion", "check_input_kind", "list_criteria", "list_miners", "describe", "resolve", "accepted_params",
    "torch_losses", "pml_losses", "pml_miners", "INPUT_KINDS", "MetricLoss", "ViewsLoss", "AdaptiveSoftmaxLoss",
    "CoKeSingleView", "CoKeDoubleView", "CoKeMultiView",
    "knn_accuracy", "knn_predict", "precision_at_1", "nmi", "linear_probe_accuracy",
]
