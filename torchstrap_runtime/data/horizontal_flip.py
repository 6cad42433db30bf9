"""RandomHorizontalFlip: mirror left-right with probability p."""
from typing import Optional

import numpy as np

from .base import SeededTransform, check_probability, random_flip_kernel


class RandomHorizontalFlip(SeededTransform):
    """Flip each image left-right with probability `p` (draw 0 < p).

    Args:
        p: probability of flipping a sample, in [0, 1]; 0 never flips, 1 always flips.
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(random_flip_kernel)

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, "RandomHorizontalFlip")

    def params(self) -> np.ndarray:
        return np.array([self.p, 1.0])  # flip 1: left-right
