"""Cutout: fill a square of fixed size at a random position of every image (DeVries & Taylor, 2017; FFCV's Cutout)."""
from typing import Optional, Sequence

import numpy as np
from numba import njit, prange

from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.state import State

from .base import SeededInPlaceTransform
from .rng import randint, sample_key
from .translation import check_fill


@njit(cache=True, parallel=True, nogil=True)
def cutout_kernel(images, dst, indices, key, params):
    size = int(params[0])
    fill = params[1:4].astype(np.uint8)
    n, h, w, _ = images.shape
    for i in prange(n):
        k = sample_key(key, indices[i])
        top = randint(k, 0, 0, h - size)
        left = randint(k, 1, 0, w - size)
        images[i, top:top + size, left:left + size] = fill
    return images


class Cutout(SeededInPlaceTransform):
    """Fill a `crop_size` x `crop_size` square of each image with `fill`; its top-left corner is uniform over the
    positions where the square fits (row: draw 0, column: draw 1), so every image gets exactly one square.

    Args:
        crop_size: side of the square in pixels (>= 1, at most the image's height and width).
        fill: RGB colour (3 ints in [0, 255]); FFCV's CIFAR example uses the dataset's mean colour.
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(cutout_kernel)

    def __init__(self, crop_size: int, fill: Sequence[int] = (0, 0, 0), seed: Optional[int] = None):
        super().__init__(seed)
        if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)) or crop_size < 1:
            raise ValueError(f"Cutout: crop_size must be an int >= 1, got {crop_size!r}")
        self.crop_size = int(crop_size)
        self.fill = tuple(int(v) for v in check_fill(fill, "Cutout"))

    def params(self) -> np.ndarray:
        return np.array([self.crop_size, *self.fill], dtype=np.float64)

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, Optional[AllocationQuery]]:
        state, _ = super().declare_state_and_memory(previous_state)
        height, width, _ = previous_state.shape
        if self.crop_size > min(height, width):
            raise ValueError(f"Cutout: crop_size {self.crop_size} does not fit in {height}x{width} images")
        return state, None
