"""Metric accumulators of the default hooks: running sums over an epoch, top-k hits, a confusion matrix.

A running sum is a plain dict of floats with a `count` (e.g. {"loss": 0.0, "top1": 0.0, "count": 0}): the step
hooks add to it, the epoch hooks reduce it over ranks (`distributed.all_reduce_sums`) and divide by `count`.
"""

from __future__ import annotations

import torch


def new_sums(*keys: str) -> dict[str, float]:
    """A running sum of `keys`, all 0, with its `count`."""
    return {**{key: 0.0 for key in keys}, "count": 0}


def means(sums: dict[str, float]) -> dict[str, float]:
    """Each sum divided by the count (a count of 0 counts as 1)."""
    n = max(1, sums["count"])
    return {key: value / n for key, value in sums.items() if key != "count"}


def topk_correct(outputs: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    """Number of samples whose target is among the top-k outputs, for each k (k capped at the class count)."""
    kmax = min(max(ks), outputs.shape[1])
    top = outputs.topk(kmax, dim=1).indices
    hits = top == targets.view(-1, 1)
    return [float(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def accumulate_confusion(confusion: torch.Tensor | None, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Add a batch to a (classes x classes) confusion matrix of counts (rows: target, columns: prediction)."""
    classes = outputs.shape[1]
    counts = torch.bincount(targets * classes + outputs.argmax(1), minlength=classes * classes)
    counts = counts[: classes * classes].view(classes, classes)
    return counts if confusion is None else confusion + counts
