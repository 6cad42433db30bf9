"""VICReg (Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022; code facebookresearch/vicreg): the criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_cat_with_grad
from .inputs import check_views, full_precision
from .recipes import MILD_JITTER, BaselineRecipe, OptimizerRecipe, scaled_width, two_views


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class VICRegLoss(nn.Module):
    """`sim_coeff` * invariance + `std_coeff` * variance + `cov_coeff` * covariance of `student=[z1, z2]`.

    Invariance: the mean squared error between the two views on this rank's samples. Variance and covariance are
    computed over the batch gathered from every rank (with gradients, as the authors' FullGatherLayer):
    variance, mean over features of relu(1 - sqrt(var + 1e-4)) (unbiased variance) for each view, halved;
    covariance, the squared off-diagonal entries of each view's covariance (divided by N - 1) summed and divided
    by the number of features. Defaults 25 / 25 / 1 are the authors'.
    """

    input_kind = "student_teacher"

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0):
        super().__init__()
        self.sim_coeff, self.std_coeff, self.cov_coeff = float(sim_coeff), float(std_coeff), float(cov_coeff)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor] | None = None) -> torch.Tensor:
        check_views("vicreg", student, teacher, 2, None)
        x, y = full_precision(student)
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"vicreg: the two views have different widths {x.shape[1]} and {y.shape[1]}")
        invariance = F.mse_loss(x, y)
        x, y = all_gather_cat_with_grad(x), all_gather_cat_with_grad(y)
        if x.shape[0] < 2:
            raise ValueError("vicreg needs at least 2 samples in the (global) batch for its variance")
        x, y = x - x.mean(dim=0), y - y.mean(dim=0)
        std_x, std_y = torch.sqrt(x.var(dim=0) + 1e-4), torch.sqrt(y.var(dim=0) + 1e-4)
        variance = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
        n, width = x.shape
        covariance = (off_diagonal(x.T @ x / (n - 1)).pow(2).sum() / width
                      + off_diagonal(y.T @ y / (n - 1)).pow(2).sum() / width)
        return self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance

    def extra_repr(self) -> str:
        return f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}"


class VICRegProjector(nn.Module):
    """VICReg's projector (facebookresearch/vicreg `Projector`, mlp "8192-8192-8192"): per hidden width
    Linear -> BatchNorm -> ReLU, then a Linear without bias to the last width."""

    def __init__(self, in_dim: int, widths: tuple[int, ...] = (8192, 8192, 8192), bias_last: bool = False,
                 bias_hidden: bool = True):
        super().__init__()
        dims, layers = [in_dim, *widths], []
        for a, b in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(a, b, bias=bias_hidden), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=bias_last))
        self.net, self.out_dim = nn.Sequential(*layers), dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def vicreg_heads(in_dim: int, head_scale: float = 1.0, vit: bool = False):
    return VICRegProjector(in_dim, (scaled_width(8192, head_scale),) * 3), None


# main_vicreg.py (ImageNet, batch 2048): LARS, base_lr 0.2 x batch / 256, weight decay 1e-6, no decay nor
# adaptation on biases and norms, 10 warm-up epochs then a cosine to 0.001 x lr; loss 25 / 25 / 1; views
# (augmentations.py): jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur 1.0 / 0.1, solarization 0 / 0.2.
RECIPE = BaselineRecipe(
    name="vicreg", criterion="vicreg", params={"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0},
    heads=vicreg_heads,
    views=lambda size, small_size, small_crops, scale_min=0.08: two_views(
        size, MILD_JITTER, (1.0, 0.1), (0.0, 0.2), scale=(scale_min, 1.0)),
    optimizer=OptimizerRecipe("lars", base_lr=0.2, weight_decay=1e-6, end_lr_ratio=0.001))
