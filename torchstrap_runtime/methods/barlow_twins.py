"""Barlow Twins (Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", ICML 2021;
code facebookresearch/barlowtwins): the criterion."""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import all_reduce_sum_with_grad
from .inputs import check_views, full_precision
from .vicreg import off_diagonal
from .recipes import MILD_JITTER, BaselineRecipe, OptimizerRecipe, scaled_width, two_views
from .vicreg import VICRegProjector

BATCHNORM_EPS = 1e-5   # nn.BatchNorm1d's default, which the authors' normalisation layer keeps


def batch_standardize(z: torch.Tensor, eps: float = BATCHNORM_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """((z - mean) / sqrt(var + eps), N): features standardised over the N samples of every rank (biased
    variance), as a BatchNorm1d without affine parameters in training mode under SyncBatchNorm."""
    count = all_reduce_sum_with_grad(z.new_tensor([float(z.shape[0])]))
    mean = all_reduce_sum_with_grad(z.sum(dim=0)) / count
    centered = z - mean
    var = all_reduce_sum_with_grad((centered * centered).sum(dim=0)) / count
    return centered * torch.rsqrt(var + eps), count


class BarlowTwinsLoss(nn.Module):
    """Sum over the cross-correlation matrix C of the batch-normalised `student=[z1, z2]` of (1 - C_ii)^2 plus
    `lambd` (0.0051, the authors') times the squared off-diagonal entries.

    Features are standardised over the batch of every rank (the authors' BatchNorm1d(affine=False) under
    SyncBatchNorm, always with batch statistics), and C = z1_n^T z2_n / N is summed across ranks. The authors'
    all_reduce does not carry gradients, which makes their gradients 1/world_size of one process's on the global
    batch; here the sum is differentiable, so 2 ranks train exactly as 1 rank on the global batch.
    """

    input_kind = "student_teacher"

    def __init__(self, lambd: float = 0.0051):
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor] | None = None) -> torch.Tensor:
        check_views("barlow_twins", student, teacher, 2, None)
        z1, z2 = full_precision(student)
        if z1.shape[1] != z2.shape[1]:
            raise ValueError(f"barlow_twins: the two views have different widths {z1.shape[1]} and {z2.shape[1]}")
        n1, count = batch_standardize(z1)
        n2, _ = batch_standardize(z2)
        c = all_reduce_sum_with_grad(n1.T @ n2) / count
        on_diag = (torch.diagonal(c) - 1).pow(2).sum()
        off_diag = off_diagonal(c).pow(2).sum()
        return on_diag + self.lambd * off_diag

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


class BarlowTwinsProjector(VICRegProjector):
    """Barlow Twins' projector (facebookresearch/barlowtwins main.py, "8192-8192-8192"): per hidden width
    Linear (no bias) -> BatchNorm -> ReLU, then a Linear without bias; the loss's BatchNorm (no affine) is in
    the criterion."""

    def __init__(self, in_dim: int, widths: tuple[int, ...] = (8192, 8192, 8192)):
        super().__init__(in_dim, widths, bias_last=False, bias_hidden=False)


def barlow_twins_heads(in_dim: int, head_scale: float = 1.0, vit: bool = False):
    return BarlowTwinsProjector(in_dim, (scaled_width(8192, head_scale),) * 3), None


# main.py (ImageNet, batch 2048): LARS, lr 0.2 (weights) and 0.0048 (biases and BatchNorm) x batch / 256,
# weight decay 1.5e-6 on the weights only, no adaptation of biases and norms, 10 warm-up epochs then a cosine
# to 0.001 x lr; lambd 0.0051; views: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur 1.0 / 0.1,
# solarization 0 / 0.2.
RECIPE = BaselineRecipe(
    name="barlow_twins", criterion="barlow_twins", params={"lambd": 0.0051}, heads=barlow_twins_heads,
    views=lambda size, small_size, small_crops, scale_min=0.08: two_views(
        size, MILD_JITTER, (1.0, 0.1), (0.0, 0.2), scale=(scale_min, 1.0)),
    optimizer=OptimizerRecipe("lars", base_lr=0.2, weight_decay=1.5e-6, end_lr_ratio=0.001, bias_lr=0.0048))
