"""RandomHorizontalFlip and RandomVerticalFlip: mirror left-right or top-bottom with probability p."""
import numpy as np
from numba import njit, prange

from .base import SeededTransform, WithProbability
from .image_kernels import COPY, LEFT_RIGHT, UPSIDE_DOWN, flip_image
from .rng import sample_key, uniform


@njit(cache=True, parallel=True, nogil=True)
def flip_kernel(images, dst, indices, key, params):
    """Flip the samples whose draw 0 is below params[0] the way params[1] names (LEFT_RIGHT or UPSIDE_DOWN);
    copy the others."""
    p, direction = params[0], int(params[1])
    for i in prange(images.shape[0]):
        flip_image(images[i], dst[i], direction if uniform(sample_key(key, indices[i]), 0) < p else COPY)
    return dst


class RandomHorizontalFlip(WithProbability, SeededTransform):
    """Flip each image left-right with probability `p` (draw 0 < p).

    Args:
        p: probability of flipping a sample, in [0, 1]; 0 never flips, 1 always flips.
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(flip_kernel)
    direction = LEFT_RIGHT

    def params(self) -> np.ndarray:
        return np.array([self.p, self.direction])


class RandomVerticalFlip(RandomHorizontalFlip):
    """Flip each image upside down with probability `p` (draw 0 < p).

    Args:
        p: probability of flipping a sample, in [0, 1]; 0 never flips, 1 always flips.
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    direction = UPSIDE_DOWN
