"""RandomVerticalFlip: mirror top-bottom with probability p."""
from .base import SeededFlip


class RandomVerticalFlip(SeededFlip):
    """Flip each image upside down with probability `p` (draw 0 < p); arguments: see `SeededFlip`."""

    flip = 2
