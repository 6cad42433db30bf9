"""Optimizers and learning-rate schedules the Trainer builds from the `optimizer` and `scheduler` sections.

    groups = parameter_groups(model, weight_decay, exclude_norm_bias)
    optimizer = build_optimizer(name, groups, lr=lr, momentum=momentum, nesterov=nesterov)
    scheduler = build_scheduler(name, optimizer, steps_per_epoch=..., epochs=..., warmup_epochs=..., ...)

The Trainer steps a scheduler once per epoch when it is one of `PER_EPOCH_SCHEDULERS`, else once per step.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

PER_EPOCH_SCHEDULERS = (torch.optim.lr_scheduler.StepLR, torch.optim.lr_scheduler.MultiStepLR)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step", "multistep", "onecycle")


def parameter_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool = False) -> list[dict]:
    """The model's trainable parameters as optimizer groups, each with its `weight_decay`."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": params, "weight_decay": weight_decay}]


def build_optimizer(name: str, groups: Iterable[dict], lr: float, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """`sgd`, `adam` or `adamw` over `groups` (weight decay is set per group)."""
    groups = list(groups)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer.name: unknown optimizer {name!r}, expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                    warmup_epochs: float = 0.0, step_size: int = 30, milestones: Iterable[int] = (30, 60),
                    gamma: float = 0.1, min_lr: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule `name` (None for `none`). Cosine and one-cycle step per batch; step/multistep per epoch."""
    sched = torch.optim.lr_scheduler
    steps = max(1, epochs * steps_per_epoch)
    if name == "none":
        return None
    if name == "step":
        return sched.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "multistep":
        return sched.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    if name == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps)
    if name == "cosine":
        warmup = int(warmup_epochs * steps_per_epoch)
        return sched.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, warmup, steps))
    raise ValueError(f"scheduler.name: unknown schedule {name!r}, expected one of {', '.join(SCHEDULERS)}")


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
