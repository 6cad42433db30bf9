"""Evaluation of embeddings by a kNN vote over the training set's embeddings.

    features, labels = embed_loader(self, self.val_loader.bank)  # the training set's embeddings (kNN reference)

A `KNNValLoader(val, bank)` is a validation loader that also carries `bank`, a plain loader over the training
set whose embeddings are the kNN reference.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from .distributed import drop_padding, gather_rows


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
