"""Uniform call conventions around pytorch-metric-learning losses.

Every criterion that `build_criterion` returns carries `input_kind`, telling a Trainer how to call it:

- "logits_targets":    criterion(output, target)                  (most torch.nn losses)
- "custom":            the loss's own signature, e.g. criterion(anchor, positive, negative)
- "embeddings_labels": criterion(embeddings, labels, ref_emb=None, ref_labels=None, indices_tuple=None)
- "views":             criterion(views, indices=None), views = list of [B, D] tensors of the same samples
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

INPUT_KINDS = ("logits_targets", "custom", "embeddings_labels", "views")


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
