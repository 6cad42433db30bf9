"""FFCV's learning-rate schedules, set before every optimizer step (libffcv/ffcv-imagenet's `train_imagenet.py`
and FFCV's CIFAR-10 example), built for the `scheduler.name` choices of `FFCV_SCHEDULES` by `optim.build_scheduler`:

  `ffcv_cyclic`: per epoch e, interp(e, [0, lr_peak_epoch, epochs], [1e-4 lr, lr, 0]); inside epoch e the
      lr goes linearly from the value of e towards the value of e + 1 (iteration i of n: i / n of the way);
  `ffcv_step`: per epoch e, lr * step_ratio ** (e // step_length) (0 from `epochs` on), within an epoch as
      above (`scheduler.gamma` is their step_ratio, `scheduler.step_size` their step_length);
  `ffcv_cifar_cyclic`: one triangle over the whole run counted in iterations: interp(s, [0, lr_peak_epoch n,
      epochs n], [0, lr, 0]) at optimizer step s (the CIFAR example: the first step has lr 0).

`PerIterationLR` holds each group's base lr (its peak) and sets lr_at(step, base) before every step. The
keys of the other schedules that these do not use, `scheduler.warmup_epochs` and `scheduler.min_lr`, stop the run
with a sentence when set (`check_unused_keys`) rather than being ignored.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..config import ConfigError

FFCV_SCHEDULES = ("ffcv_cyclic", "ffcv_step", "ffcv_cifar_cyclic")  # scheduler.name choices built here
CYCLIC_START = 1e-4  # ffcv_cyclic starts at this fraction of the peak lr


def cyclic_epoch_lr(epoch: float, lr: float, epochs: int, lr_peak_epoch: int) -> float:
    """ffcv_cyclic's lr at the start of `epoch`: from 1e-4 lr at 0 up to lr at lr_peak_epoch, down to 0 at epochs."""
    return float(np.interp(epoch, (0, lr_peak_epoch, epochs), (CYCLIC_START * lr, lr, 0)))


def step_epoch_lr(epoch: int, lr: float, epochs: int, step_ratio: float, step_length: int) -> float:
    """ffcv_step's lr at the start of `epoch`: lr * step_ratio ** (epoch // step_length), 0 from `epochs` on."""
    return 0.0 if epoch >= epochs else lr * step_ratio ** (epoch // step_length)


def within_epoch(step: int, steps_per_epoch: int, epoch_lr: Callable[[int], float]) -> float:
    """lr at optimizer step `step`: linear from epoch_lr(e) to epoch_lr(e + 1) over the epoch's steps."""
    epoch, index = divmod(step, steps_per_epoch)
    return float(np.interp(index, (0, steps_per_epoch), (epoch_lr(epoch), epoch_lr(epoch + 1))))


def cifar_cyclic_lr(step: int, lr: float, steps_per_epoch: int, epochs: int, lr_peak_epoch: int) -> float:
    """ffcv_cifar_cyclic: lr times the triangle 0 -> 1 (at lr_peak_epoch) -> 0 (at epochs), in steps."""
    factor = np.interp(step, (0, lr_peak_epoch * steps_per_epoch, epochs * steps_per_epoch), (0, 1, 0))
    return lr * factor


def schedule_lr(name: str, step: int, lr: float, steps_per_epoch: int, epochs: int, lr_peak_epoch: int = 2,
                step_ratio: float = 0.1, step_length: int = 30) -> float:
    """The lr of schedule `name` (one of FFCV_SCHEDULES) at optimizer step `step` for a peak (base) lr `lr`."""
    if name == "ffcv_cifar_cyclic":
        return float(cifar_cyclic_lr(step, lr, steps_per_epoch, epochs, lr_peak_epoch))
    if name == "ffcv_cyclic":
        return within_epoch(step, steps_per_epoch, lambda e: cyclic_epoch_lr(e, lr, epochs, lr_peak_epoch))
    if name == "ffcv_step":
        return within_epoch(step, steps_per_epoch, lambda e: step_epoch_lr(e, lr, epochs, step_ratio, step_length))
    raise ValueError(f"scheduler.name: unknown FFCV schedule {name!r}, expected one of {', '.join(FFCV_SCHEDULES)}")


class PerIterationLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets every group's lr to `lr_at(step, base lr of the group)` before each optimizer step (step 0 at start)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_at: Callable[[int, float], float]) -> None:
        self.lr_at = lr_at
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "lr_at")}


def check_unused_keys(name: str, warmup_epochs: float, min_lr: float, lr_peak_epoch: int) -> None:
    """Stop with one sentence when `scheduler.warmup_epochs` or `scheduler.min_lr` is set for schedule `name`
    (one of FFCV_SCHEDULES): their warm-up is lr_peak_epoch's ramp and they end at 0, as the FFCV recipes do."""
    if warmup_epochs:
        instead = ("ffcv_step has no warm-up (use ffcv_cyclic for a ramp up to scheduler.lr_peak_epoch)"
                   if name == "ffcv_step" else
                   f"its warm-up is the ramp up to scheduler.lr_peak_epoch (now {lr_peak_epoch}): set that instead")
        raise ConfigError(f"scheduler.warmup_epochs is {warmup_epochs:g} but scheduler.name {name} does not use it: "
                          f"{instead}, and scheduler.warmup_epochs 0")
    if min_lr:
        raise ConfigError(f"scheduler.min_lr is {min_lr:g} but scheduler.name {name} does not use it: FFCV's "
                          f"schedules end at lr 0 after training.epochs (set scheduler.min_lr 0, or use cosine)")


def build_ffcv_scheduler(name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
                         lr_peak_epoch: int, step_ratio: float, step_length: int, warmup_epochs: float = 0.0,
                         min_lr: float = 0.0) -> PerIterationLR:
    """The per-iteration scheduler of `name` (FFCV_SCHEDULES); each group's lr is its peak (base) lr."""
    check_unused_keys(name, warmup_epochs, min_lr, lr_peak_epoch)
    if not 0 <= lr_peak_epoch <= epochs:
        raise ConfigError(f"scheduler.lr_peak_epoch must be in [0, training.epochs = {epochs}], got {lr_peak_epoch}")
    steps_per_epoch = max(1, steps_per_epoch)
    return PerIterationLR(optimizer, lambda step, lr: schedule_lr(name, step, lr, steps_per_epoch, epochs,
                                                                  lr_peak_epoch, step_ratio, step_length))
