"""RandomErasing: fill a random rectangle of the image, with probability p."""
import math
from typing import Optional, Sequence, Union

import numpy as np
from numba import njit, prange

from .base import SeededInPlaceTransform, check_probability, check_scale_ratio
from .rng import randint, sample_key, uniform, uniform_range

ATTEMPTS = 10
RANDOM_VALUE = -1.0  # params marker for value="random"
PIXEL_DRAWS = 64  # draws below this number are the op's own; pixel noise uses the ones above


@njit(cache=True, parallel=True, nogil=True)
def erasing_kernel(images, dst, indices, key, params):
    p, scale_lo, scale_hi, log_r_lo, log_r_hi = params[0], params[1], params[2], params[3], params[4]
    n, h, w, c = images.shape
    area = float(h * w)
    for i in prange(n):
        k = sample_key(key, indices[i])
        if uniform(k, 0) >= p:
            continue
        for attempt in range(ATTEMPTS):
            d = 1 + 4 * attempt
            erase_area = area * uniform_range(k, d, scale_lo, scale_hi)
            aspect = math.exp(uniform_range(k, d + 1, log_r_lo, log_r_hi))
            eh = int(round(math.sqrt(erase_area * aspect)))
            ew = int(round(math.sqrt(erase_area / aspect)))
            if not (0 < eh < h and 0 < ew < w):
                continue
            top = randint(k, d + 2, 0, h - eh)
            left = randint(k, d + 3, 0, w - ew)
            for y in range(top, top + eh):
                for x in range(left, left + ew):
                    for ch in range(c):
                        if params[5] == RANDOM_VALUE:
                            draw = PIXEL_DRAWS + (y * w + x) * c + ch
                            images[i, y, x, ch] = np.uint8(int(uniform(k, draw) * 256.0))
                        else:
                            images[i, y, x, ch] = np.uint8(params[5 + ch])
            break
    return images


class RandomErasing(SeededInPlaceTransform):
    """With probability `p` (draw 0 < p), fill one random rectangle (torchvision's RandomErasing).

    For attempts a = 0..9: the rectangle's area is a uniform fraction in `scale` of the image (draw 1+4a),
    its aspect ratio height/width log-uniform in `ratio` (draw 2+4a); if it fits strictly inside the image
    its top-left corner is uniform (draws 3+4a, 4+4a) and it is filled, otherwise the next attempt is
    tried (after 10 misfits the image is left as it is).

    Args:
        p: probability of erasing in a sample, in [0, 1].
        scale: (min, max) fraction of the image's area, 0 < min <= max <= 1.
        ratio: (min, max) aspect ratio height/width of the rectangle, 0 < min <= max.
        value: fill: an int in [0, 255] (all channels), an RGB triple, or "random" (uniform noise per pixel).
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(erasing_kernel)

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3),
                 value: Union[int, Sequence[int], str] = 0, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, "RandomErasing")
        self.scale, self.ratio = check_scale_ratio(scale, ratio, "RandomErasing")
        self.value = check_value(value)

    def params(self) -> np.ndarray:
        fill = [RANDOM_VALUE] * 3 if self.value == "random" else list(self.value)
        return np.array([self.p, *self.scale, math.log(self.ratio[0]), math.log(self.ratio[1]), *fill])


def check_value(value) -> Union[str, tuple]:
    if isinstance(value, str):
        if value != "random":
            raise ValueError(f"RandomErasing: value must be an int, an RGB triple or 'random', got {value!r}")
        return value
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in values):
        raise ValueError(f"RandomErasing: value must be an int in [0, 255], an RGB triple or 'random', got {value!r}")
    return tuple(int(v) for v in values)
