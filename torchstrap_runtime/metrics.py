"""Metric accumulators: running sums over an epoch, and a classification pass's sums (loss, top-k hits, confusion).

    self.val_sums = ClassificationSums()              # before_eval_epoch
    self.val_sums.add(class_scores(outputs, criterion), labels, loss)  # eval_step: on the device, no host sync
    self.epoch_record.update(self.val_sums.metrics()) # after_eval_epoch: val_loss, val_top1, val_top5 over all ranks

A running sum is a plain dict of numbers with a `count` (e.g. {"loss": 0.0, "top1": 0.0, "count": 0}): the step
hooks add to it (`add_to_sums` keeps the values tensors on their device, so a step reads nothing back), the
epoch hooks reduce it over ranks (`distributed.all_reduce_sums`, which reads tensors back) and divide by `count`.
"""

from __future__ import annotations

import torch

from .distributed import all_reduce_sum, all_reduce_sums


def new_sums(*keys: str) -> dict[str, float]:
    """A running sum of `keys`, all 0, with its `count`."""
    return {**{key: 0.0 for key in keys}, "count": 0}


def add_to_sums(sums: dict, **values: torch.Tensor) -> None:
    """Add one step's values to a running sum and count the step, without a host sync: each sum becomes a
    float64 tensor on the values' device (float32 on MPS, which has no float64) that is added to in place."""
    for key, value in values.items():
        total = sums[key]
        if value.requires_grad:
            value = value.detach()
        if isinstance(total, torch.Tensor):
            total.add_(value.view(()) if value.dim() else value)
        else:
            wide = torch.float32 if value.device.type == "mps" else torch.float64
            sums[key] = value.reshape(()).to(wide) + total
    sums["count"] += 1


def means(sums: dict[str, float]) -> dict[str, float]:
    """Each sum divided by the count (a count of 0 counts as 1)."""
    n = max(1, sums["count"])
    return {key: value / n for key, value in sums.items() if key != "count"}


def topk_hits(outputs: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[torch.Tensor]:
    """Samples whose target is among the top-k outputs, per k (k capped at the class count), as tensors."""
    kmax = min(max(ks), outputs.shape[1])
    hits = outputs.topk(kmax, dim=1).indices == targets.view(-1, 1)
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def confusion_counts(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(classes x classes) counts of a batch: rows the target, columns the predicted class."""
    classes = outputs.shape[1]
    counts = torch.bincount(targets * classes + outputs.argmax(1), minlength=classes * classes)
    return counts[: classes * classes].view(classes, classes)


def class_scores(outputs: torch.Tensor, criterion) -> torch.Tensor:
    """The class scores top-k accuracy ranks: the model's `outputs`, or `criterion.log_prob(outputs)` when the
    criterion holds the output layer (AdaptiveLogSoftmaxWithLoss: the model outputs features, not logits)."""
    log_prob = getattr(criterion, "log_prob", None)
    return outputs if log_prob is None else log_prob(outputs)


class ClassificationSums:
    """A validation pass's sums for classification: loss, top-1 and top-5 hits, samples, confusion counts.
    Kept as tensors on the outputs' device; `metrics()` reads them back once, summed over ranks."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | int] = {"loss": 0, "top1": 0, "top5": 0}
        self.count = 0
        self.confusion: torch.Tensor | None = None

    def add(self, outputs: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> None:
        """Add a batch: `outputs` [N, classes] scores, `labels` [N], `loss` its mean loss."""
        top1, top5 = topk_hits(outputs.float(), labels, (1, 5))
        n = labels.shape[0]
        self.sums["loss"] = self.sums["loss"] + loss.detach().double() * n
        self.sums["top1"] = self.sums["top1"] + top1
        self.sums["top5"] = self.sums["top5"] + top5
        self.count += n
        counts = confusion_counts(outputs, labels)
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def metrics(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """val_loss, val_top1 and val_top5 over all ranks."""
        sums = all_reduce_sums({**{k: float(v) for k, v in self.sums.items()}, "count": self.count}, device)
        n = max(1, sums["count"])
        return {"val_loss": sums["loss"] / n, "val_top1": sums["top1"] / n, "val_top5": sums["top5"] / n}

    def confusion_over_ranks(self) -> torch.Tensor | None:
        """The confusion counts summed over ranks (None before the first batch)."""
        return None if self.confusion is None else all_reduce_sum(self.confusion)
