"""NormalizeOnDevice: uint8 NCHW torch images -> (x - mean) / std in the training dtype, on their own device
(the FFCV pipeline op over `torchstrap_runtime.normalize.ImageNormalizer`, which runs without FFCV)."""
from dataclasses import replace
from typing import Callable, Optional, Sequence, Tuple

import torch
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from ..normalize import ImageNormalizer


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
        self.normalizer = ImageNormalizer(mean, std, dtype)
        self.dtype = dtype

    def generate_code(self) -> Callable:
        normalizer = self.normalizer

        def normalize(images: torch.Tensor, _) -> torch.Tensor:
            return normalizer(images)

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
