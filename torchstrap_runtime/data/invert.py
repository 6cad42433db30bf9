"""RandomInvert: replace every pixel value v by 255 - v with probability p."""

from numba import njit, prange

from .base import SeededInPlaceTransform, WithProbability
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


class RandomInvert(WithProbability, SeededInPlaceTransform):
    """Invert each image (v -> 255 - v on every channel) with probability `p` (draw 0 < p).

    Args:
        p: probability of inverting a sample, in [0, 1].
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(invert_kernel)
