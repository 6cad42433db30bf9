"""The momentum teacher of BYOL, MoCo v3 and DINO: a copy of the online network that follows it as an
exponential moving average, its momentum rising from a base value to 1 along a cosine over the run."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def teacher_momentum(base: float, step: int, total_steps: int) -> float:
    """`1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2`: `base` at step 0, rising to 1 at `total_steps`.

    The three authors' schedules are this one: BYOL's target decay over its training steps, MoCo v3's
    `adjust_moco_momentum` at the fractional epoch `epoch + i / iters_per_epoch`, and DINO's
    `cosine_scheduler(base, 1, epochs, niter_per_ep)` at iteration `step` (it divides by the run's iteration
    count, so its last value stays just below 1)."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


class MomentumTeacher(nn.Module):
    """A frozen copy of `student` (`self.network`) updated by `update(student)` after each optimizer step:
    `teacher = m * teacher + (1 - m) * student` over the parameters, `m = teacher_momentum(base_momentum,
    updates + offset, total_steps)`. Buffers (BatchNorm statistics) are the teacher's own, from its forward,
    as in the authors' code. The update count is a buffer, so the schedule resumes exactly from a checkpoint.

    `offset`: 0 for BYOL and DINO (step k's update uses m(k)); 1 for MoCo v3, whose forward updates the key
    encoder before step k + 1 with m(k + 1), which is the same as updating after step k with that value.
    """

    def __init__(self, student: nn.Module, base_momentum: float, total_steps: int, offset: int = 0):
        super().__init__()
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"teacher base momentum must be in [0, 1], got {base_momentum!r}")
        if total_steps < 1:
            raise ValueError(f"teacher total_steps must be >= 1, got {total_steps!r}")
        self.network = copy.deepcopy(student)
        self.network.requires_grad_(False)
        self.base_momentum, self.total_steps, self.offset = float(base_momentum), int(total_steps), int(offset)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def momentum(self) -> float:
        """The momentum the next `update` uses."""
        return teacher_momentum(self.base_momentum, int(self.updates) + self.offset, self.total_steps)

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """Move the teacher's parameters towards `student`'s (same architecture); returns the momentum used."""
        m = self.momentum()
        mine, theirs = list(self.network.parameters()), [p.detach() for p in student.parameters()]
        if len(mine) != len(theirs):
            raise ValueError(f"the teacher has {len(mine)} parameter tensors, the student {len(theirs)}")
        torch._foreach_mul_(mine, m)   # m * teacher + ((1 - m) * student), rounded as the authors' loop rounds it
        torch._foreach_add_(mine, torch._foreach_mul(theirs, 1.0 - m))
        self.updates += 1
        return m

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.network(*args, **kwargs)
