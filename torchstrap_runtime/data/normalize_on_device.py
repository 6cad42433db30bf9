"""NormalizeOnDevice: uint8 NCHW torch images -> (x - mean) / std in the training dtype, on their own device."""
from dataclasses import replace
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State


class NormalizeOnDevice(Operation):
    """Normalise a uint8 (N, 3, H, W) torch batch where it is (after `ToDevice`: on the GPU), as FFCV's ImageNet
    example does, without FFCV's cupy kernel: computed in float32, returned in `dtype`, keeping the memory format
    (channels_last stays channels_last).

    Args:
        mean, std: per-channel statistics on the 0..255 scale.
        dtype: output dtype, e.g. torch.float32, torch.bfloat16, torch.float16.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32):
        super().__init__()
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.shape != (3,) or std.shape != (3,) or np.any(std <= 0):
            raise ValueError(f"NormalizeOnDevice: mean and std must be 3 numbers (std > 0), got {mean} and {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = torch.tensor(1.0 / std, dtype=torch.float32).view(1, 3, 1, 1)
        self.dtype = dtype
        self.on: dict = {}  # device -> (mean, scale) there, copied once

    def generate_code(self) -> Callable:
        on, mean, scale, dtype = self.on, self.mean, self.scale, self.dtype

        def normalize(images: torch.Tensor, _) -> torch.Tensor:
            if images.device not in on:
                on[images.device] = (mean.to(images.device), scale.to(images.device))
            m, s = on[images.device]
            return ((images.float() - m) * s).to(dtype)

        return normalize

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        return replace(previous_state, dtype=self.dtype), None


def batch_device(device: str) -> torch.device:
    """Where the loader should deliver batches for `training.device`: 'auto' and 'cuda' mean this process's
    current GPU (set per local rank by setup_distributed) when CUDA is present; anything else as given."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    return target
