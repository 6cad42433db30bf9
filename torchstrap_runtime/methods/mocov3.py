"""MoCo v3 (Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021;
code facebookresearch/moco-v3): the criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_cat, rows_before_rank
from .inputs import check_temperature, check_views, full_precision
from .recipes import MILD_JITTER, BaselineRecipe, OptimizerRecipe, TeacherRecipe, scaled_width, two_views


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


class MoCoV3MLP(nn.Module):
    """MoCo v3's `_build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn)`: Linear layers without bias,
    BatchNorm -> ReLU after each hidden one, and after the last a BatchNorm without affine parameters when
    `last_bn` (the projector; not the predictor)."""

    def __init__(self, num_layers: int, in_dim: int, mlp_dim: int, out_dim: int, last_bn: bool = True):
        super().__init__()
        layers = []
        for i in range(num_layers):
            a, b = in_dim if i == 0 else mlp_dim, out_dim if i == num_layers - 1 else mlp_dim
            layers.append(nn.Linear(a, b, bias=False))
            if i < num_layers - 1:
                layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
            elif last_bn:
                layers.append(nn.BatchNorm1d(b, affine=False))
        self.net, self.out_dim = nn.Sequential(*layers), out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mocov3_heads(in_dim: int, head_scale: float = 1.0, vit: bool = False):
    """MoCo_ResNet: projector 2 layers (in-4096-256); MoCo_ViT: 3 layers; predictor 2 layers (256-4096-256)."""
    mlp, dim = scaled_width(4096, head_scale), scaled_width(256, head_scale)
    return MoCoV3MLP(3 if vit else 2, in_dim, mlp, dim), MoCoV3MLP(2, dim, mlp, dim, last_bn=False)


# CONFIG.md: ResNet-50 (100 epochs, batch 4096): LARS, lr 0.6 x batch / 256, weight decay 1e-6 (none on 1-D
# parameters), 10 warm-up epochs, momentum 0.99, temperature 1.0; ViT-Small/Base (300 epochs): AdamW, lr 1.5e-4
# x batch / 256, weight decay 0.1 on every parameter (AdamW(model.parameters())), 40 warm-up epochs, temperature
# 0.2. Both: cosine to 0, momentum cosine to 1; views (main_moco.py augmentation1/2): jitter (0.4, 0.4, 0.2, 0.1)
# p 0.8, grayscale 0.2, blur 1.0 / 0.1, solarization 0 / 0.2.
RECIPE = BaselineRecipe(
    name="mocov3", criterion="mocov3", params={"temperature": 1.0}, vit_params={"temperature": 0.2}, heads=mocov3_heads,
    views=lambda size, small_size, small_crops, scale_min=0.08: two_views(
        size, MILD_JITTER, (1.0, 0.1), (0.0, 0.2), scale=(scale_min, 1.0)),
    optimizer=OptimizerRecipe("lars", base_lr=0.6, weight_decay=1e-6,
                              vit=OptimizerRecipe("adamw", base_lr=1.5e-4, weight_decay=0.1, warmup_epochs=40.0,
                                                  exclude_norm_bias=False)),
    teacher=TeacherRecipe(0.99, offset=1))
