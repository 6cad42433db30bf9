"""RandomSolarization: invert the pixel values at or above a threshold, with probability p."""
from typing import Optional

import numpy as np
from numba import njit, prange

from .base import SeededInPlaceTransform, check_probability
from .image_kernels import solarize_image
from .rng import sample_key, uniform


@njit(cache=True, parallel=True, nogil=True)
def solarization_kernel(images, dst, indices, key, params):
    """Solarize (threshold params[1]), in place, the samples whose draw 0 is below params[0]."""
    p, threshold = params[0], int(params[1])
    for i in prange(images.shape[0]):
        if uniform(sample_key(key, indices[i]), 0) < p:
            solarize_image(images[i], threshold)
    return images


class RandomSolarization(SeededInPlaceTransform):
    """With probability `p` (draw 0 < p), replace every value v >= `threshold` by 255 - v (per channel).

    Like torchvision's RandomSolarize: values below the threshold are kept.

    Args:
        p: probability of solarizing a sample, in [0, 1].
        threshold: int in [0, 256]; 0 inverts everything, 256 nothing.
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(solarization_kernel)

    def __init__(self, p: float = 0.5, threshold: int = 128, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, "RandomSolarization")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= 256:
            raise ValueError(f"RandomSolarization: threshold must be an int in [0, 256], got {threshold!r}")
        self.threshold = int(threshold)

    def params(self) -> np.ndarray:
        return np.array([self.p, self.threshold], dtype=np.float64)
