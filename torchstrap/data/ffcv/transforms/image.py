"""The seeded image ops, one per file in torchstrap_runtime.data."""

from torchstrap_runtime.data import (Cutout, RandomColorJitter, RandomErasing, RandomGaussianBlur, RandomGrayscale,
                                     RandomHorizontalFlip, RandomInvert, RandomResizedCrop, RandomSolarization,
                                     RandomTranslation, RandomVerticalFlip)

__all__ = ["Cutout", "RandomColorJitter", "RandomErasing", "RandomGaussianBlur", "RandomGrayscale", "RandomHorizontalFlip",
           "RandomInvert", "RandomResizedCrop", "RandomSolarization", "RandomTranslation", "RandomVerticalFlip"]
