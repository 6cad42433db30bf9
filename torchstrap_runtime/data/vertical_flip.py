"""RandomVerticalFlip: mirror top-bottom with probability p."""
from typing import Optional

import numpy as np
from numba import njit, prange

from .base import SeededTransform, check_probability
from .image_kernels import COPY, UPSIDE_DOWN, flip_image
from .rng import sample_key, uniform


@njit(cache=True, parallel=True, nogil=True)
def vertical_flip_kernel(images, dst, indices, key, params):
    """Turn upside down the samples whose draw 0 is below params[0]; copy the others."""
    p = params[0]
    for i in prange(images.shape[0]):
        flip_image(images[i], dst[i], UPSIDE_DOWN if uniform(sample_key(key, indices[i]), 0) < p else COPY)
    return dst


class RandomVerticalFlip(SeededTransform):
    """Flip each image upside down with probability `p` (draw 0 < p).

    Args:
        p: probability of flipping a sample, in [0, 1]; 0 never flips, 1 always flips.
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(vertical_flip_kernel)

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, "RandomVerticalFlip")

    def params(self) -> np.ndarray:
        return np.array([self.p])
