"""The training losses of the steps since the last read, kept on the device that computed them.

Reading a GPU value on the host (`float(loss)`, `.item()`) makes the CPU wait until the GPU has caught up, so
the loop reads losses back only at log points, checkpoints and epoch ends: `StepLosses` keeps each step's
detached loss until then and gives them back in one read, with their step numbers, so that the first step
whose loss is not finite can be named (`training.stop_on_nan`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .distributed import is_distributed


class StepLosses:
    """Each step's loss tensor (detached, where it was computed) until `read()`; every `compact_every` steps the
    kept scalars are stacked into one tensor on their device (no read), so a long stretch between reads holds
    a few tensors rather than one per step."""

    def __init__(self, compact_every: int = 1024) -> None:
        self.compact_every = compact_every
        self.steps: list[int] = []
        self.recent: list[torch.Tensor] = []    # scalars not stacked yet
        self.stacked: list[torch.Tensor] = []   # 1-d tensors of earlier steps, in order

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, loss: torch.Tensor) -> None:
        """Keep `loss` (a one-element tensor) of global step `step`; nothing is read back."""
        self.steps.append(step)
        self.recent.append(loss)
        if len(self.recent) >= self.compact_every:
            self.stacked.append(torch.stack(self.recent).reshape(-1))
            self.recent = []

    def read(self) -> list[tuple[int, float]]:
        """`(step, loss)` of every step kept since the last read, as Python floats (one host read); empties."""
        if not self.steps:
            return []
        if not self.stacked and len(self.recent) == 1:
            values = [self.recent[0].item()]
        else:
            parts = self.stacked + ([torch.stack(self.recent).reshape(-1)] if self.recent else [])
            values = torch.cat(parts).tolist()
        read = list(zip(self.steps, values))
        self.steps, self.recent, self.stacked = [], [], []
        return read

    def first_non_finite(self, device: torch.device | str = "cpu") -> tuple[int, float] | None:
        """Read the kept losses; `(step, loss)` of the first that is NaN or infinite, over all ranks (the earliest
        step any rank saw; the value is this rank's, or NaN when another rank saw it), else None.
        Every rank must call it at the same point."""
        bad = next(((step, value) for step, value in self.read() if not math.isfinite(value)), None)
        if not is_distributed():
            return bad
        first = torch.tensor([float(bad[0]) if bad else math.inf], dtype=torch.float64, device=device)
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = first.item()
        if math.isinf(step):
            return None
        return (int(step), bad[1] if bad and bad[0] == int(step) else math.nan)
