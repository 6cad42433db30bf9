"""Image normalisation where the batch already is (on the GPU after the copy): uint8 NCHW -> (x - mean) / std in
the training dtype, keeping the memory format. Plain torch, no FFCV: the Trainer's hooks call it on batches of
any loader, and FFCV's pipeline op `torchstrap_runtime.data.NormalizeOnDevice` runs the same code."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class ImageNormalizer:
    """`normalizer(images)`: a uint8 (N, 3, H, W) batch as `(images - mean) / std`, computed in float32 and
    returned in `dtype`, on the batch's own device (channels_last stays channels_last).

    Args:
        mean, std: per-channel statistics on the 0..255 scale.
        dtype: output dtype, e.g. torch.float32, torch.bfloat16, torch.float16.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> None:
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.shape != (3,) or std.shape != (3,) or np.any(std <= 0):
            raise ValueError(f"image normalisation: mean and std must be 3 numbers (std > 0), got {mean} and {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = torch.tensor(1.0 / std, dtype=torch.float32).view(1, 3, 1, 1)
        self.dtype = dtype
        self.on: dict = {}  # device -> (mean, scale) there, copied once

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self.on:
            self.on[images.device] = (self.mean.to(images.device), self.scale.to(images.device))
        mean, scale = self.on[images.device]
        return ((images.float() - mean) * scale).to(self.dtype)
