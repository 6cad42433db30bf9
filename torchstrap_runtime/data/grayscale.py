"""RandomGrayscale: replace the three channels by the luma, with probability p."""
from typing import Optional

import numpy as np
from numba import njit, prange

from .base import SeededInPlaceTransform, WithProbability
from .rng import sample_key, uniform


@njit(cache=True, inline="always")
def luma(r, g, b) -> int:
    """ITU-R 601-2 luma, rounded: (299 R + 587 G + 114 B) / 1000, like PIL's convert('L')."""
    return (299 * np.int32(r) + 587 * np.int32(g) + 114 * np.int32(b) + 500) // 1000


@njit(cache=True, parallel=True, nogil=True)
def grayscale_kernel(images, dst, indices, key, params):
    p = params[0]
    n, h, w, _ = images.shape
    for i in prange(n):
        if uniform(sample_key(key, indices[i]), 0) < p:
            for y in range(h):
                for x in range(w):
                    v = np.uint8(luma(images[i, y, x, 0], images[i, y, x, 1], images[i, y, x, 2]))
                    images[i, y, x, 0] = v
                    images[i, y, x, 1] = v
                    images[i, y, x, 2] = v
    return images


class RandomGrayscale(WithProbability, SeededInPlaceTransform):
    """With probability `p` (draw 0 < p), set R = G = B = round(0.299 R + 0.587 G + 0.114 B).

    The output keeps three (equal) channels, so it can be followed by any RGB op.

    Args:
        p: probability of converting a sample, in [0, 1].
        seed: None (fresh entropy each time a Loader is built) or an int. Two RandomGrayscale ops with
            the same int seed (e.g. in two views) convert exactly the same samples.
    """

    kernel = staticmethod(grayscale_kernel)

    def __init__(self, p: float = 0.2, seed: Optional[int] = None):
        super().__init__(p, seed)
