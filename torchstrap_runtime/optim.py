"""Optimizers and learning-rate schedules the Trainer builds from the `optimizer` and `scheduler` sections.

    groups = parameter_groups(model, weight_decay, exclude_norm_bias)
    optimizer = build_optimizer(name, groups, lr=lr, momentum=momentum, nesterov=nesterov)
    scheduler = build_scheduler(name, optimizer, steps_per_epoch=..., epochs=..., warmup_epochs=..., min_lr=...)

The Trainer steps a scheduler once per epoch when it is one of `PER_EPOCH_SCHEDULERS`, else once per step.

Schedules (`warmup_epochs` W, `min_lr` m, base lr of a parameter group b):
- every schedule starts with a linear warm-up over the first W epochs, counted in steps:
  lr = b * (s + 1) / (W * steps_per_epoch) at step s. It ends at the schedule's own value (b, or b decayed
  when a step/multistep milestone falls inside the warm-up);
- `none`: b after the warm-up (no scheduler at all when W = 0);
- `cosine`: from b at the end of the warm-up down to m at the last step: m + (b - m) * (1 + cos(pi * t)) / 2;
- `step` / `multistep`: b * gamma ** (decays so far), never below m; the lr changes at epoch boundaries,
  milestones count epochs from the start of training (warm-up included), as in Goyal et al. (2017).
  With W = 0 and m = 0 they are torch's StepLR / MultiStepLR, stepped per epoch; otherwise a per-step
  LambdaLR (so the warm-up is per step) that gives every epoch after the warm-up the same lr;
- `ffcv_cyclic`, `ffcv_step`, `ffcv_cifar_cyclic`: FFCV's recipes, per iteration (recipes/ffcv_lr.py); their
  warm-up is the ramp to `lr_peak_epoch` and they end at 0: W or m set with them stops with a sentence;
- `onecycle`: torch's OneCycleLR (its own warm-up, from b/25 up to b, and momentum cycling); W sets the
  length of that warm-up (else torch's 30% of the run) and m > 0 its final lr (else b/25/1e4).
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

import torch
from torch import nn

from .config import ConfigError
from .errors import UserError
from .recipes.ffcv_lr import FFCV_SCHEDULES, build_ffcv_scheduler

PER_EPOCH_SCHEDULERS = (torch.optim.lr_scheduler.StepLR, torch.optim.lr_scheduler.MultiStepLR)
OPTIMIZERS = ("sgd", "adamw", "adam", "lars")                     # the choices of optimizer.name
SCHEDULERS = ("none", "cosine", "step", "multistep", "onecycle", *FFCV_SCHEDULES)  # the choices of scheduler.name
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)
ONECYCLE_DIV_FACTOR = 25.0   # torch's default: OneCycleLR starts at max_lr / 25


def is_norm_or_bias(module: nn.Module, name: str) -> bool:
    """Whether the parameter `name` of `module` (not recursing) is a normalization layer's or a bias:
    every parameter of a BatchNorm/SyncBatchNorm/InstanceNorm/GroupNorm/LayerNorm/RMSNorm, and every
    parameter named `bias` or `*_bias` (e.g. MultiheadAttention's `in_proj_bias`)."""
    return isinstance(module, NORM_LAYERS) or name == "bias" or name.endswith("_bias")


def parameter_groups(model: nn.Module, weight_decay: float, exclude_norm_bias: bool = False) -> list[dict]:
    """The model's trainable parameters as optimizer groups, each with its `weight_decay`.

    With `exclude_norm_bias`, the parameters for which `is_norm_or_bias` holds go to a second group with
    weight decay 0 and `lars_exclude=True` (LARS does not adapt their lr either), the usual SSL recipe
    (SimCLR, BYOL, SwAV, Barlow Twins). An empty group is left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    excluded = {id(p) for module in model.modules() for name, p in module.named_parameters(recurse=False)
                if is_norm_or_bias(module, name)}
    decay = [p for p in params if id(p) not in excluded]
    no_decay = [p for p in params if id(p) in excluded]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]
    return [group for group in groups if group["params"]] or groups[:1]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al., 2017), as SimCLR, BYOL, SwAV use it.

    For each parameter tensor w with gradient g, in a group with `weight_decay` wd and `lr`:
        d = g + wd * w
        d = d * eta * ||w|| / ||d||    unless the group has `lars_exclude=True`, or ||w|| or ||d|| is 0
        buf = momentum * buf + d       (buf = d at the first step)
        w = w - lr * (d + momentum * buf if nesterov else buf)
    Groups built by `parameter_groups(..., exclude_norm_bias=True)` mark norm and bias parameters
    `lars_exclude` (no weight decay, no adaptation).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, lars_exclude: bool = False) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: lr, momentum, weight_decay must be >= 0 and eta > 0 "
                             f"(got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta})")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov,
                        lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if not group["lars_exclude"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0), group["eta"] * w_norm / d_norm,
                                        torch.ones_like(w_norm))
                    d.mul_(trust)
                if momentum:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(d)
                    buf = state["momentum_buffer"]
                    d = d.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(d, alpha=-group["lr"])
        return loss


FUSED_OPTIMIZERS = ("sgd", "adam", "adamw")   # those torch has a fused kernel for (optimizer.fused)


def build_optimizer(name: str, groups: Iterable[dict], lr: float, momentum: float = 0.9,
                    nesterov: bool = False, fused: bool = False) -> torch.optim.Optimizer:
    """`sgd`, `adam`, `adamw` or `lars` (see `LARS`) over `groups` (weight decay is set per group); `fused`:
    torch's fused kernel (sgd, adam, adamw), which also takes the float16 loss scale without a host sync."""
    groups = list(groups)
    if fused and name not in FUSED_OPTIMIZERS:
        raise UserError(f"optimizer.fused is true but torch has no fused kernel for optimizer.name {name!r}; "
                        f"use one of {', '.join(FUSED_OPTIMIZERS)} or set optimizer.fused false")
    kernel = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, **kernel)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, **kernel)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **kernel)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ConfigError(f"optimizer.name: unknown optimizer {name!r}, expected one of {', '.join(OPTIMIZERS)}")


def base_lr(group: dict) -> float:
    """The lr a schedule starts from: the group's peak (OneCycleLR), initial (other schedules) or current lr."""
    return float(group.get("max_lr", group.get("initial_lr", group["lr"])))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                    warmup_epochs: float = 0.0, step_size: int = 30, milestones: Iterable[int] = (30, 60),
                    gamma: float = 0.1, min_lr: float = 0.0,
                    lr_peak_epoch: int = 2) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The schedule `name` (None for `none` without warm-up); see the module docstring for each curve.
    StepLR/MultiStepLR step per epoch; every other schedule returned here steps per batch."""
    sched = torch.optim.lr_scheduler
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name: unknown schedule {name!r}, expected one of {', '.join(SCHEDULERS)}")
    steps_per_epoch = max(1, steps_per_epoch)
    steps = max(1, epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch)
    bases = [base_lr(group) for group in optimizer.param_groups]
    if name in FFCV_SCHEDULES:   # their own warm-up (lr_peak_epoch); gamma, step_size: ffcv_step's ratio, length
        return build_ffcv_scheduler(name, optimizer, steps_per_epoch, epochs, lr_peak_epoch, gamma, step_size,
                                    warmup_epochs, min_lr)
    if name == "onecycle":
        return _one_cycle(optimizer, bases, steps, warmup, min_lr)
    if min_lr > min(bases):
        raise ConfigError(f"scheduler.min_lr ({min_lr}) must not exceed the learning rate ({min(bases)})")
    floors = [min_lr / b if b > 0 else 0.0 for b in bases]   # LambdaLR factors are relative to each group's lr
    if name == "none":
        return sched.LambdaLR(optimizer, lambda s: warmup_factor(s, warmup)) if warmup else None
    if name == "cosine":
        return sched.LambdaLR(optimizer, [_cosine(warmup, steps, floor) for floor in floors])
    if not warmup and not min_lr:   # step / multistep as torch has them, stepped per epoch
        if name == "step":
            return sched.StepLR(optimizer, step_size=step_size, gamma=gamma)
        return sched.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    milestones = sorted(milestones)
    decays = ((lambda epoch: epoch // step_size) if name == "step"
              else (lambda epoch: bisect.bisect_right(milestones, epoch)))
    return sched.LambdaLR(optimizer, [_stepwise(warmup, steps_per_epoch, decays, gamma, floor) for floor in floors])


def warmup_factor(step: int, warmup: int) -> float:
    """LR factor of the linear warm-up: (step + 1) / warmup over the first `warmup` steps, then 1."""
    return (step + 1) / warmup if step < warmup else 1.0


def cosine_with_warmup(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """LR factor: linear warm-up over `warmup` steps, then cosine decay from 1 to `floor` at `total`."""
    if step < warmup:
        return warmup_factor(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _cosine(warmup: int, total: int, floor: float) -> Callable[[int], float]:
    return lambda s: cosine_with_warmup(s, warmup, total, floor)


def _stepwise(warmup: int, steps_per_epoch: int, decays: Callable[[int], int], gamma: float,
              floor: float) -> Callable[[int], float]:
    """Per-step factor of a step/multistep schedule: warm-up x gamma ** decays(epoch of step s), floored."""
    return lambda s: warmup_factor(s, warmup) * max(floor, gamma ** decays(s // steps_per_epoch))


def _one_cycle(optimizer: torch.optim.Optimizer, bases: list[float], steps: int, warmup: int,
               min_lr: float) -> torch.optim.lr_scheduler.OneCycleLR:
    start = bases[0] / ONECYCLE_DIV_FACTOR
    if min_lr >= start:
        raise ConfigError(f"scheduler.min_lr ({min_lr}) must be below the one-cycle start lr "
                         f"optimizer.lr / {ONECYCLE_DIV_FACTOR:g} ({start:g})")
    pct_start = min(max(warmup, 2), steps - 1) / steps if warmup and steps > 2 else 0.3
    final_div_factor = start / min_lr if min_lr > 0 else 1e4
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=bases, total_steps=steps, pct_start=pct_start,
                                               div_factor=ONECYCLE_DIV_FACTOR, final_div_factor=final_div_factor)
