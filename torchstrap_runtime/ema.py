"""The exponential moving average of the weights (`training.ema_decay`), kept as a state dict of tensors."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def ema_copy(weights: dict[str, torch.Tensor], device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """A detached copy of a state dict (on `device` when given): the EMA's starting point."""
    if device is None:
        return {k: v.detach().clone() for k, v in weights.items()}
    return {k: v.detach().to(device, copy=True) for k, v in weights.items()}


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    """`ema = decay * ema + (1 - decay) * weights` for floating tensors; other buffers are copied."""
    live = model.state_dict()
    floats = [k for k, v in ema.items() if v.is_floating_point()]
    torch._foreach_lerp_([ema[k] for k in floats], [live[k] for k in floats], 1.0 - decay)
    for k, v in ema.items():
        if not v.is_floating_point():
            v.copy_(live[k])


@contextlib.contextmanager
def swapped_in(model: nn.Module, ema: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Inside: `model` holds the EMA weights (when there is an EMA); its own are restored bitwise after."""
    if ema is None:
        yield
        return
    live = model.state_dict()
    saved = {k: v.detach().clone() for k, v in live.items()}
    with torch.no_grad():
        for k, v in live.items():
            v.copy_(ema[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in live.items():
                v.copy_(saved[k])
