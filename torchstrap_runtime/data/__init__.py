"""Seeded, reproducible FFCV data: ops, Loader, dataset writers (see docs/data.md)."""
from . import _ffcv_import  # noqa: F401  (first: imports FFCV without its ~5 s typed-dict compile)
from ffcv.loader import OrderOption

from . import ffcv_fixes

ffcv_fixes.apply()

from .color_jitter import RandomColorJitter
from .decoders import SimpleRGBImageDecoder
from .erasing import RandomErasing
from .grayscale import RandomGrayscale
from .horizontal_flip import RandomHorizontalFlip
from .invert import RandomInvert
from .loader import Loader
from .normalize_on_device import NormalizeOnDevice, batch_device
from .random_resized_crop import RandomResizedCrop
from .solarization import RandomSolarization
from .translation import RandomTranslation
from .vertical_flip import RandomVerticalFlip
from .writers import beton_info, check_beton, write_dataset, write_digits, write_image_files, write_image_folder
from .sources import SOURCES, SourceError, prepare, read_classes

__all__ = [
    "Loader", "OrderOption", "write_dataset", "write_digits", "write_image_folder", "write_image_files",
    "check_beton", "beton_info", "prepare", "read_classes", "SOURCES", "SourceError", "NormalizeOnDevice", "batch_device",
    "SimpleRGBImageDecoder", "RandomResizedCrop", "RandomColorJitter", "RandomErasing", "RandomTranslation",
    "RandomSolarization", "RandomGrayscale", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomInvert",
]
