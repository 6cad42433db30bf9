"""RandomHorizontalFlip: mirror left-right with probability p."""
from typing import Optional

import numpy as np
from numba import njit, prange

from .base import SeededTransform, check_probability
from .image_kernels import COPY, LEFT_RIGHT, flip_image
from .rng import sample_key, uniform


@njit(cache=True, parallel=True, nogil=True)
def horizontal_flip_kernel(images, dst, indices, key, params):
    """Mirror left-right the samples whose draw 0 is below params[0]; copy the others."""
    p = params[0]
    for i in prange(images.shape[0]):
        flip_image(images[i], dst[i], LEFT_RIGHT if uniform(sample_key(key, indices[i]), 0) < p else COPY)
    return dst


class RandomHorizontalFlip(SeededTransform):
    """Flip each image left-right with probability `p` (draw 0 < p).

    Args:
        p: probability of flipping a sample, in [0, 1]; 0 never flips, 1 always flips.
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(horizontal_flip_kernel)

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, "RandomHorizontalFlip")

    def params(self) -> np.ndarray:
        return np.array([self.p])
