"""Seeded, reproducible FFCV data: ops, Loader, dataset writers (see docs/data.md)."""
from . import _ffcv_import  # noqa: F401  (first: imports FFCV without its ~5 s typed-dict compile)
from ffcv.loader import OrderOption

from . import ffcv_fixes

ffcv_fixes.apply()

from .coke_pipelines import (coke_imagenet_double_view, coke_imagenet_multi_view, coke_imagenet_single_view,
                             op_seed_names)
from .color_jitter import RandomColorJitter
from .decoders import SimpleRGBImageDecoder
from .erasing import RandomErasing
from .gaussian_blur import RandomGaussianBlur
from .grayscale import RandomGrayscale
from .horizontal_flip import RandomHorizontalFlip
from .invert import RandomInvert
from .loader import Loader
from .random_resized_crop import RandomResizedCrop
from .solarization import RandomSolarization
from .translation import RandomTranslation
from .vertical_flip import RandomVerticalFlip
from .writers import beton_info, check_beton, write_dataset, write_digits, write_image_folder

__all__ = [
    "Loader", "OrderOption", "write_dataset", "write_digits", "write_image_folder", "check_beton", "beton_info",
    "SimpleRGBImageDecoder", "RandomResizedCrop", "RandomColorJitter", "RandomErasing", "RandomTranslation",
    "RandomSolarization", "RandomGrayscale", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomInvert",
    "RandomGaussianBlur", "coke_imagenet_single_view", "coke_imagenet_double_view", "coke_imagenet_multi_view",
    "op_seed_names",
]
