"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020;
code google-research/simclr): the NT-Xent criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_cat_with_grad, rows_before_rank
from .inputs import check_temperature, check_views, full_precision
from .recipes import STRONG_JITTER, BaselineRecipe, OptimizerRecipe, scaled_width, two_views


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


class SimCLRProjector(nn.Module):
    """SimCLR's projection head (google-research/simclr, v2's `ProjectionHead` with num_proj_layers 3): each
    hidden layer Linear (no bias) -> BatchNorm -> ReLU at the input's width; the last Linear (no bias) ->
    BatchNorm without centring (their `center=False`: a scale, its bias frozen at 0) to `out_dim` (128)."""

    def __init__(self, in_dim: int, out_dim: int = 128, num_layers: int = 3, hidden_dim: int | None = None):
        super().__init__()
        hidden, layers = hidden_dim or in_dim, []
        for i in range(num_layers - 1):
            layers += [nn.Linear(in_dim if i == 0 else hidden, hidden, bias=False), nn.BatchNorm1d(hidden),
                       nn.ReLU(inplace=True)]
        last = nn.BatchNorm1d(out_dim)
        last.bias.requires_grad_(False)
        layers += [nn.Linear(hidden if num_layers > 1 else in_dim, out_dim, bias=False), last]
        self.net, self.out_dim = nn.Sequential(*layers), out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def simclr_heads(in_dim: int, head_scale: float = 1.0, vit: bool = False):
    return SimCLRProjector(in_dim, scaled_width(128, head_scale)), None


# run.py's ImageNet settings: LARS, lr 0.3 x batch / 256 (learning_rate_scaling linear), weight decay 1e-6,
# 10 warm-up epochs then a cosine to 0, temperature 0.1; views: colour jitter strength 1 (0.8, 0.8, 0.8, 0.2)
# with p 0.8, grayscale 0.2, blur p 0.5 on both views, no solarization.
RECIPE = BaselineRecipe(
    name="simclr", criterion="simclr", params={"temperature": 0.1}, heads=simclr_heads,
    views=lambda size, small_size, small_crops, scale_min=0.08: two_views(
        size, STRONG_JITTER, (0.5, 0.5), (0.0, 0.0), scale=(scale_min, 1.0)),
    optimizer=OptimizerRecipe("lars", base_lr=0.3, weight_decay=1e-6))
