"""Uniform call conventions around pytorch-metric-learning losses and torch.nn loss layers.

Every criterion that `build_criterion` returns carries `input_kind`, telling a Trainer how to call it:

- "logits_targets":    criterion(output, target)                  (most torch.nn losses)
- "custom":            the loss's own signature, e.g. criterion(anchor, positive, negative)
- "embeddings_labels": criterion(embeddings, labels, ref_emb=None, ref_labels=None, indices_tuple=None)
- "views":             criterion(views, indices=None), views = list of [B, D] tensors of the same samples
- "student_teacher":   criterion(student, teacher=None), per-view lists of [B, D] tensors of the same samples in
                       view order, global views first: the online network's outputs for every view, and the
                       momentum teacher's for the global views (None for methods without a teacher)
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

INPUT_KINDS = ("logits_targets", "custom", "embeddings_labels", "views", "student_teacher")


class MetricLoss(nn.Module):
    """A pytorch-metric-learning loss (and optional miner) called as criterion(embeddings, labels)."""

    input_kind = "embeddings_labels"

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None):
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                indices_tuple: tuple | None = None, **kwargs) -> torch.Tensor:
        if self.miner is not None and indices_tuple is None:
            indices_tuple = self.miner(embeddings, labels, ref_emb, ref_labels)
        optional = dict(indices_tuple=indices_tuple, ref_emb=ref_emb, ref_labels=ref_labels, **kwargs)
        return self.loss(embeddings, labels, **{k: v for k, v in optional.items() if v is not None})


class ViewsLoss(nn.Module):
    """A self-supervised pytorch-metric-learning loss taking (embeddings, ref_emb) of two views.

    With more than two views the loss is averaged over every pair of views.
    """

    input_kind = "views"

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, views: list[torch.Tensor] | tuple[torch.Tensor, ...],
                indices: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(views, torch.Tensor) or len(views) < 2:
            raise ValueError(f"{type(self.loss).__name__} needs a list of at least 2 views, "
                             f"got {_describe(views)}")
        pairs = list(combinations(range(len(views)), 2))
        return sum(self.loss(views[i], ref_emb=views[j]) for i, j in pairs) / len(pairs)


def _describe(views) -> str:
    if isinstance(views, torch.Tensor):
        return f"a single tensor of shape {tuple(views.shape)}"
    return f"{len(views)} view(s)"


class AdaptiveSoftmaxLoss(nn.Module):
    """torch.nn.AdaptiveLogSoftmaxWithLoss as a loss: criterion(features, targets) is the mean negative
    log-likelihood of the targets.

    It is an output layer with its own weights (the Trainer gives them to the optimizer): the model outputs
    `in_features` features, not logits, and `n_classes` may be large (frequent classes first, split at
    `cutoffs`). `log_prob(features)` gives the (N, n_classes) log-probabilities to score predictions with
    (top-1 of the model's raw outputs means nothing here); `predict(features)` the most likely classes.
    """

    def __init__(self, in_features: int, n_classes: int, cutoffs: list[int], div_value: float = 4.0,
                 head_bias: bool = False):
        super().__init__()
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(in_features, n_classes, list(cutoffs), div_value=div_value,
                                                      head_bias=head_bias)

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.adaptive(features.float(), targets).loss

    def log_prob(self, features: torch.Tensor) -> torch.Tensor:
        return self.adaptive.log_prob(features.float())

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.adaptive.predict(features.float())
