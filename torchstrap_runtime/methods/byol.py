"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020;
code google-deepmind/deepmind-research, byol/): the criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import check_views, full_precision


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample 2 - 2 cos(prediction, target), the squared distance of the L2-normalised vectors."""
    return 2 - 2 * (F.normalize(prediction, dim=1) * F.normalize(target, dim=1)).sum(dim=1)


class BYOLLoss(nn.Module):
    """Symmetric regression of the online predictions `student=[p1, p2]` onto the target projections
    `teacher=[t1, t2]` of the other view: mean over the batch of (2 - 2 cos(p1, t2)) + (2 - 2 cos(p2, t1)),
    as the authors' `repr_loss` (the two directions added). The targets are detached (stop-gradient)."""

    input_kind = "student_teacher"

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor] | None = None) -> torch.Tensor:
        check_views("byol", student, teacher, 2, 2)
        (p1, p2), (t1, t2) = full_precision(student), full_precision([t.detach() for t in teacher])
        return (regression_loss(p1, t2) + regression_loss(p2, t1)).mean()
