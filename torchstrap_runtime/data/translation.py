"""RandomTranslation: shift the image by up to `padding` pixels, filling the revealed border."""
from typing import Optional, Sequence

import numpy as np
from numba import njit, prange

from .base import SeededTransform, check_probability
from .rng import randint, sample_key, uniform


@njit(cache=True, parallel=True, nogil=True)
def translation_kernel(images, dst, indices, key, params):
    padding, p = int(params[0]), params[1]
    fill = params[2:5].astype(np.uint8)
    n, h, w, _ = images.shape
    for i in prange(n):
        k = sample_key(key, indices[i])
        dy, dx = 0, 0
        if uniform(k, 0) < p:
            dy = randint(k, 1, -padding, padding)
            dx = randint(k, 2, -padding, padding)
        x0, x1 = max(0, -dx), min(w, w - dx)  # output columns that come from the input
        for y in range(h):
            sy = y + dy
            if sy < 0 or sy >= h or x0 >= x1:
                dst[i, y, :] = fill
                continue
            dst[i, y, :x0] = fill
            dst[i, y, x0:x1] = images[i, sy, x0 + dx:x1 + dx]
            dst[i, y, x1:] = fill
    return dst


def check_fill(fill: Sequence[int], owner: str) -> np.ndarray:
    values = np.asarray(fill)
    if values.shape != (3,) or values.min() < 0 or values.max() > 255:
        raise ValueError(f"{owner}: fill must be 3 ints in [0, 255] (an RGB colour), got {fill!r}")
    return values.astype(np.uint8)


class RandomTranslation(SeededTransform):
    """With probability `p`, shift each image: out[y, x] = in[y + dy, x + dx], fill outside.

    dy and dx are independent uniform integers in [-padding, padding] (draws 1 and 2; draw 0 < p decides
    whether the sample is shifted). This is "pad by `padding` with `fill`, then take a random crop of the
    original size", the usual CIFAR augmentation.

    Args:
        padding: largest shift in pixels (>= 0), in each direction.
        fill: RGB colour (3 ints in [0, 255]) of the pixels shifted in from outside.
        p: probability that a sample is shifted at all (1.0 = always; dy = dx = 0 is possible then too).
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(translation_kernel)

    def __init__(self, padding: int = 4, fill: Sequence[int] = (0, 0, 0), p: float = 1.0,
                 seed: Optional[int] = None):
        super().__init__(seed)
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"RandomTranslation: padding must be an int >= 0, got {padding!r}")
        self.padding = padding
        self.fill = tuple(int(v) for v in check_fill(fill, "RandomTranslation"))
        self.p = check_probability(p, "RandomTranslation")

    def params(self) -> np.ndarray:
        return np.array([self.padding, self.p, *self.fill], dtype=np.float64)
