"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020;
code google-deepmind/deepmind-research, byol/): the criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import check_views, full_precision
from .recipes import MILD_JITTER, BaselineRecipe, OptimizerRecipe, TeacherRecipe, scaled_width, two_views


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


class BYOLMLP(nn.Module):
    """BYOL's projector and predictor (byol/utils/networks.py `MLP`): Linear -> BatchNorm -> ReLU -> Linear,
    hidden 4096, output 256, with biases."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def byol_heads(in_dim: int, head_scale: float = 1.0, vit: bool = False):
    hidden, out = scaled_width(4096, head_scale), scaled_width(256, head_scale)
    return BYOLMLP(in_dim, hidden, out), BYOLMLP(out, hidden, out)


# configs/byol.py (ImageNet, 1000 epochs at batch 4096): LARS, lr 0.2 x batch / 256, weight decay 1.5e-6, no
# decay nor adaptation on biases and BatchNorm, 10 warm-up epochs then a cosine to 0; target EMA 0.996 rising
# to 1; views: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur 1.0 / 0.1, solarization 0 / 0.2.
RECIPE = BaselineRecipe(
    name="byol", criterion="byol", heads=byol_heads,
    views=lambda size, small_size, small_crops, scale_min=0.08: two_views(
        size, MILD_JITTER, (1.0, 0.1), (0.0, 0.2), scale=(scale_min, 1.0)),
    optimizer=OptimizerRecipe("lars", base_lr=0.2, weight_decay=1.5e-6), teacher=TeacherRecipe(0.996))
