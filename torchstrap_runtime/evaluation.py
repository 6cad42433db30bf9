"""What evaluation hooks accumulate and score: classification sums, and embeddings scored by a kNN vote.

    self.val_sums = ClassificationSums()              # before_eval_epoch
    self.val_sums.add(outputs, labels, loss)          # eval_step: on the device, no host sync per batch
    self.epoch_record.update(self.val_sums.metrics()) # after_eval_epoch: val_loss, val_top1, val_top5 over all ranks

    features, labels = embed_loader(self, self.val_loader.bank)  # the training set's embeddings (kNN reference)

A `KNNValLoader(val, bank)` is a validation loader that also carries `bank`, a plain loader over the training
set whose embeddings are the kNN reference.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from .distributed import all_reduce_sum, all_reduce_sums, drop_padding, gather_rows


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
        self.sums["loss"] = self.sums["loss"] + loss.detach().float() * n
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


class KNNValLoader:
    """The validation loader (iterated by the eval loop) and `bank`: a plain loader over the training set
    whose embeddings are the kNN reference of evaluation."""

    def __init__(self, val: Iterable, bank: Iterable):
        self.val, self.bank = val, bank

    def __iter__(self) -> Iterator:
        return iter(self.val)

    def __len__(self) -> int:
        return len(self.val)

    def __getattr__(self, name: str) -> Any:
        if name in ("val", "bank"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.val, name)  # the rest is the validation loader's (e.g. its padding, `drop_padding`)


@torch.no_grad()
def embed_loader(trainer: Any, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """`trainer.test_time_augmentation` on every batch of `loader` (through `trainer.to_device` and
    `trainer.autocast`, padding dropped): (embeddings [N, D] float32, labels [N]) on the CPU, from all ranks."""
    embeddings, labels = [], []
    for batch in loader:
        inputs, targets = trainer.to_device(drop_padding(loader, *batch))
        with trainer.autocast():
            embeddings.append(trainer.test_time_augmentation(inputs).float().cpu())
        labels.append(targets.cpu())
    return gather_rows(torch.cat(embeddings)), gather_rows(torch.cat(labels))


def gathered(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Tensors kept batch by batch (e.g. validation embeddings), concatenated on the CPU over all ranks."""
    return gather_rows(torch.cat([c.cpu() for c in chunks]))
