"""MoCo v3 (Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021;
code facebookresearch/moco-v3): the criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_cat, rows_before_rank
from .inputs import check_temperature, check_views, full_precision


class MoCoV3Loss(nn.Module):
    """InfoNCE of the queries `student=[q1, q2]` (online predictions) against the keys `teacher=[k1, k2]`
    (momentum-encoder projections) of the other view: ctr(q1, k2) + ctr(q2, k1), as the authors' forward.

    ctr(q, k) is the cross-entropy of cosine similarities / `temperature` between this rank's queries and the
    keys gathered from every rank (without gradient: keys come from the momentum encoder), the positive being
    the same sample's key, multiplied by 2 * `temperature`. The authors' default temperature is 1.0 (their
    ResNet-50 runs); their ViT runs use 0.2.
    """

    input_kind = "student_teacher"

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = check_temperature("mocov3", temperature)

    def contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
        keys = all_gather_cat(k)
        labels = torch.arange(q.shape[0], device=q.device) + rows_before_rank(q.shape[0], q.device)
        return F.cross_entropy(q @ keys.T / self.temperature, labels) * (2 * self.temperature)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor] | None = None) -> torch.Tensor:
        check_views("mocov3", student, teacher, 2, 2)
        (q1, q2), (k1, k2) = full_precision(student), full_precision(teacher)
        return self.contrastive(q1, k2) + self.contrastive(q2, k1)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
