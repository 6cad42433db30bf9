"""Evaluation of embeddings: a kNN vote over the training set's embeddings, the effective rank of a batch of
embeddings (`rankme`), and a linear probe trained alongside the run (`OnlineLinearProbe`).

    features, labels = embed_loader(self, self.val_loader.bank)  # the training set's embeddings (kNN reference)

A `KNNValLoader(val, bank)` is a validation loader that also carries `bank`, a plain loader over the training
set whose embeddings are the kNN reference.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

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


def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023): the effective rank `exp(-sum p_k log p_k)` of an (N, D) embedding matrix,
    `p_k = sigma_k / ||sigma||_1 + eps` over its singular values; from 1 (collapsed) to min(N, D)."""
    sigma = torch.linalg.svdvals(embeddings.detach().double())
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


class OnlineLinearProbe(nn.Module):
    """A linear classifier trained alongside the run on detached features, with its own AdamW: no gradient
    reaches the backbone, and the main optimizer never sees its weights. As in MAE's and MoCo v3's linear
    probes, the features pass a BatchNorm without affine parameters first (eps 1e-6) and the weights start at
    std 0.01: a training step normalizes with its batch's statistics and updates the running ones, a prediction
    uses the running ones. The running statistics and the optimizer state (extra state) are in its
    `state_dict`, so a checkpoint of the module resumes it exactly."""

    def __init__(self, in_features: int, num_classes: int, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features, affine=False, eps=1e-6)
        self.linear = nn.Linear(in_features, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.AdamW(self.linear.parameters(), lr=lr, weight_decay=weight_decay)

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step of the probe on `features` (detached here); its loss, detached."""
        with torch.enable_grad():
            loss = F.cross_entropy(self.linear(self.normalized(features, batch_statistics=True)), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.is_available() and dist.is_initialized():  # every rank's probe takes the same step
            for p in self.linear.parameters():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
        self.optimizer.step()
        return loss.detach()

    def normalized(self, features: torch.Tensor, batch_statistics: bool) -> torch.Tensor:
        """`features` (detached, float32) through the norm: with this batch's statistics (updating the running
        ones) or with the running ones."""
        n = self.norm
        if batch_statistics:
            n.num_batches_tracked.add_(1)
        return F.batch_norm(features.detach().float(), n.running_mean, n.running_var, training=batch_statistics,
                            momentum=n.momentum, eps=n.eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.normalized(features, batch_statistics=False))

    def get_extra_state(self) -> dict:
        return copy.deepcopy(self.optimizer.state_dict())  # its own tensors: a later step must not change them

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
