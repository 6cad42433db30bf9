"""RandomInvert: replace every pixel value v by 255 - v with probability p."""
from typing import Optional

import numpy as np

from .base import SeededInPlaceTransform, check_probability
from .solarization import solarization_kernel


class RandomInvert(SeededInPlaceTransform):
    """Invert each image (v -> 255 - v on every channel) with probability `p` (draw 0 < p).

    Args:
        p: probability of inverting a sample, in [0, 1].
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(solarization_kernel)  # with threshold 0: every value

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, "RandomInvert")

    def params(self) -> np.ndarray:
        return np.array([self.p, 0.0])
