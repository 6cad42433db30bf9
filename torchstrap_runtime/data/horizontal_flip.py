"""RandomHorizontalFlip: mirror left-right with probability p."""
from .base import SeededFlip


class RandomHorizontalFlip(SeededFlip):
    """Flip each image left-right with probability `p` (draw 0 < p); arguments: see `SeededFlip`."""

    flip = 1
