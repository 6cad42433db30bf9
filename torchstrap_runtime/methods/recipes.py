"""What the SSL baselines' recipes share: the network (backbone -> projector -> predictor), the recipe record
(criterion, heads, views, optimizer, teacher) and the authors' optimizer and schedules built from it.

    recipe = BASELINES["byol"]                               # methods.baselines
    model = recipe.network(backbone, backbone.out_features, head_scale=1.0)
    optimizer = recipe.optimizer.build(model, global_batch=4096, vit=False)
    scheduler = recipe.optimizer.scheduler(optimizer, steps_per_epoch, epochs)

Each method's module (simclr.py, byol.py, ...) holds its criterion, heads and `RECIPE`; a recipe's values are
its authors' ImageNet settings. `head_scale` multiplies the heads' fixed widths (4096, 8192, 65536, ...; at
least 8) so a small data set can train small heads; 1 gives the authors' widths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..models import forward_by_resolution
from ..optim import LARS, cosine_with_warmup, parameter_groups

STRONG_JITTER = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue: SimCLR's (strength 1), CoKe's small crops
MILD_JITTER = (0.4, 0.4, 0.2, 0.1)    # BYOL's, VICReg's, Barlow Twins', MoCo v3's, DINO's, CoKe's large views
LR_BATCH_DIVISOR = 256   # every author here scales lr = base_lr * global batch / 256


def scaled_width(width: int, head_scale: float) -> int:
    """`width` times `head_scale`, rounded, at least 8 (the authors' width at head_scale 1)."""
    if not head_scale > 0:
        raise ValueError(f"head_scale must be > 0, got {head_scale!r}")
    return max(8, int(round(width * head_scale)))


class Encoder(nn.Module):
    """backbone -> projector. On a list of views the backbone runs once per resolution; returns (backbone
    features, projections), one [B, D] tensor per view. This is what a momentum teacher follows."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = forward_by_resolution(self.backbone, list(views))
        return features, [self.projector(f) for f in features]


class SSLNetwork(nn.Module):
    """An SSL baseline's online network: `encoder` (backbone and projector) and `predictor` (BYOL, MoCo v3;
    identity for the others). `model(views)` returns (backbone features, outputs) per view: the features for
    the online probe and evaluation, the outputs (predictions, or projections without predictor) for the
    criterion."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None = None):
        super().__init__()
        self.encoder = Encoder(backbone, projector)
        self.predictor = predictor if predictor is not None else nn.Identity()

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def forward(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features, projections = self.encoder(views)
        return features, [self.predictor(z) for z in projections]


@dataclass(frozen=True)
class OptimizerRecipe:
    """The authors' optimizer: `name` ('lars' or 'adamw'), `base_lr` at batch 256 (lr = base_lr * batch / 256),
    `weight_decay` (to `final_weight_decay` along a cosine when set: DINO), `warmup_epochs` of linear warm-up
    then a cosine to `end_lr_ratio` * lr (or to `min_lr` when set); norm parameters and biases get no weight decay
    (and no LARS adaptation) unless `exclude_norm_bias` is False (MoCo v3's AdamW decays every parameter).
    `bias_lr`: their own base lr (Barlow Twins). `vit`: the same fields for a ViT backbone (MoCo v3's AdamW) or
    None. `betas`: AdamW's."""

    name: str
    base_lr: float
    weight_decay: float
    warmup_epochs: float = 10.0
    end_lr_ratio: float = 0.0
    min_lr: float | None = None
    final_weight_decay: float | None = None
    bias_lr: float | None = None
    momentum: float = 0.9
    eta: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    exclude_norm_bias: bool = True
    vit: "OptimizerRecipe | None" = None

    def for_backbone(self, vit: bool) -> "OptimizerRecipe":
        return self.vit if vit and self.vit is not None else self

    def build(self, model: nn.Module, global_batch: int, base_lr: float = 0.0) -> torch.optim.Optimizer:
        """The optimizer over `model`'s parameters at lr = (`base_lr` or the authors') * global_batch / 256.
        Groups: weights (weight decay, LARS adaptation), then norm parameters and biases (neither)."""
        scale = global_batch / LR_BATCH_DIVISOR
        lr = (base_lr or self.base_lr) * scale
        groups = parameter_groups(model, self.weight_decay, exclude_norm_bias=self.exclude_norm_bias)
        if self.bias_lr is not None:
            for group in groups:
                if group.get("lars_exclude"):
                    group["lr"] = self.bias_lr * scale * (base_lr / self.base_lr if base_lr else 1.0)
        for group in groups:
            group["scheduled_weight_decay"] = group["weight_decay"] > 0
        if self.name == "lars":
            return LARS(groups, lr=lr, momentum=self.momentum, eta=self.eta)
        if self.name == "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=self.betas)
        raise ValueError(f"unknown recipe optimizer {self.name!r}, expected lars or adamw")

    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                  warmup_epochs: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
        """Per step: linear warm-up over `warmup_epochs` (default: the authors'), then a cosine from each group's
        lr down to `end_lr_ratio` of it (or to `min_lr`)."""
        warmup = int((self.warmup_epochs if warmup_epochs is None else warmup_epochs) * max(1, steps_per_epoch))
        total = max(1, epochs * max(1, steps_per_epoch))
        floors = [(self.min_lr / g["lr"] if self.min_lr is not None and g["lr"] > 0 else self.end_lr_ratio)
                  for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, [lambda s, f=floor: cosine_with_warmup(s, warmup, total, min(f, 1.0)) for floor in floors])

    def set_weight_decay(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        """DINO's weight-decay schedule: at `step`, a cosine from `weight_decay` to `final_weight_decay` over
        the run, on the groups that decay (a no-op without `final_weight_decay`)."""
        if self.final_weight_decay is None:
            return
        value = self.final_weight_decay + 0.5 * (self.weight_decay - self.final_weight_decay) * (
            1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
        for group in optimizer.param_groups:
            if group.get("scheduled_weight_decay"):
                group["weight_decay"] = value


@dataclass(frozen=True)
class TeacherRecipe:
    """The momentum teacher: `base_momentum`, rising to 1 along a cosine; `offset` (see MomentumTeacher)."""

    base_momentum: float
    offset: int = 0


@dataclass(frozen=True)
class BaselineRecipe:
    """An SSL baseline as its authors ran it: `criterion` (a build_criterion name) and its `params`; `heads`
    (in_dim, head_scale, vit) -> (projector, predictor or None), the projector's last width in `out_dim_param`
    of the params when the criterion needs it (DINO's out_dim); `views` (image_size, small_size, small_crops[,
    scale_min: the two views' smallest crop area, default the authors' 0.08]) -> view dicts for
    `methods.views.build_views`, global views first; `global_views`: how many the teacher
    and the probe see; `optimizer`; `teacher` or None; `small_crops`: the authors' local crops (DINO);
    `vit_params`: the criterion's parameters the authors change on a ViT (MoCo v3's temperature 0.2)."""

    name: str
    criterion: str
    heads: Callable[[int, float, bool], tuple[nn.Module, nn.Module | None]]
    views: Callable[..., list[dict]]
    optimizer: OptimizerRecipe
    params: dict = field(default_factory=dict)
    teacher: TeacherRecipe | None = None
    global_views: int = 2
    small_crops: int = 0
    out_dim_param: str | None = None
    vit_params: dict = field(default_factory=dict)

    def network(self, backbone: nn.Module, in_dim: int, head_scale: float = 1.0, vit: bool = False) -> SSLNetwork:
        """The online network: `backbone` (giving `in_dim` features) with this method's heads."""
        projector, predictor = self.heads(in_dim, head_scale, vit)
        return SSLNetwork(backbone, projector, predictor)

    def criterion_params(self, network: SSLNetwork, epochs: int, vit: bool = False) -> dict:
        """The criterion's parameters for `network` and a run of `epochs` (DINO's out_dim and nepochs; on a
        ViT the authors' ViT values, `vit_params`)."""
        params = {**self.params, **(self.vit_params if vit else {})}
        if self.out_dim_param is not None:
            params[self.out_dim_param] = network.encoder.projector.out_dim
        if "nepochs" in params:
            params["nepochs"] = epochs
        return params


def two_views(image_size: int, jitter: tuple, blur_p: tuple[float, float], solarize_p: tuple[float, float],
              scale: tuple[float, float] = (0.08, 1.0), grayscale_p: float = 0.2, jitter_p: float = 0.8,
              interpolation: str = "bilinear") -> list[dict]:
    """The two views of SimCLR, BYOL, VICReg, Barlow Twins and MoCo v3: 'image' and 'view2', the same ops with
    per-view blur and solarization probabilities."""
    return [dict(name=name, image_size=image_size, scale=scale, jitter=jitter, jitter_p=jitter_p,
                 grayscale_p=grayscale_p, blur_p=blur, solarize_p=solarize, interpolation=interpolation)
            for name, blur, solarize in (("image", blur_p[0], solarize_p[0]), ("view2", blur_p[1], solarize_p[1]))]
