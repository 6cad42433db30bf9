"""RandomInvert: replace every pixel value v by 255 - v with probability p."""
from typing import Optional

import numpy as np
from numba import njit, prange

from .base import SeededInPlaceTransform, check_probability
from .image_kernels import solarize_image
from .rng import sample_key, uniform


@njit(cache=True, parallel=True, nogil=True)
def invert_kernel(images, dst, indices, key, params):
    """Invert, in place, the samples whose draw 0 is below params[0] (solarization at threshold 0)."""
    p = params[0]
    for i in prange(images.shape[0]):
        if uniform(sample_key(key, indices[i]), 0) < p:
            solarize_image(images[i], 0)
    return images


class RandomInvert(SeededInPlaceTransform):
    """Invert each image (v -> 255 - v on every channel) with probability `p` (draw 0 < p).

    Args:
        p: probability of inverting a sample, in [0, 1].
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(invert_kernel)

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, "RandomInvert")

    def params(self) -> np.ndarray:
        return np.array([self.p])
