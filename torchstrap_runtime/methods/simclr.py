"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020;
code google-research/simclr): the NT-Xent criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_cat_with_grad, rows_before_rank
from .inputs import check_temperature, check_views, full_precision


class SimCLRLoss(nn.Module):
    """NT-Xent over the 2B projections of `student=[z1, z2]` (no teacher).

    Each of the 2B projections (L2-normalised) is an anchor whose positive is the other view of its sample and
    whose negatives are the other 2B - 2 projections of the batch gathered from every rank; the loss is the
    cross-entropy of cosine similarities / `temperature`, averaged over the 2B anchors as in the paper's
    Algorithm 1. google-research/simclr's `add_contrastive_loss` adds the two directions' means (loss_a + loss_b),
    twice this value. Gradients flow through the gathered projections (their cross-replica sum does too), so
    under DDP the gradients equal those of one process on the global batch.
    """

    input_kind = "student_teacher"

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = check_temperature("simclr", temperature)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor] | None = None) -> torch.Tensor:
        check_views("simclr", student, teacher, 2, None)
        z1, z2 = (F.normalize(z, dim=1) for z in full_precision(student))
        batch = z1.shape[0]
        all1, all2 = all_gather_cat_with_grad(z1), all_gather_cat_with_grad(z2)
        own = torch.arange(batch, device=z1.device) + rows_before_rank(batch, z1.device)
        candidates = torch.cat([all1, all2])                       # (2N, D): view 1 then view 2 of every sample
        logits = torch.cat([z1, z2]) @ candidates.T / self.temperature
        anchors = torch.arange(2 * batch, device=z1.device)
        self_index = torch.cat([own, own + all1.shape[0]])         # each anchor's own column
        positive = torch.cat([own + all1.shape[0], own])           # the other view of the same sample
        logits = logits.index_put((anchors, self_index), torch.tensor(float("-inf"), dtype=logits.dtype,
                                                                      device=logits.device))
        return F.cross_entropy(logits, positive)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

