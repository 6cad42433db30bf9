"""Seeded, reproducible FFCV data: ops, Loader, dataset writers (see docs/data.md)."""
import os as _os

from ..kernel_cache import cache_dir as _cache_dir


if not _os.environ.get("NUMBA_CACHE_DIR"):  # before any cached kernel is defined; children inherit it
    _os.environ["NUMBA_CACHE_DIR"] = str(_cache_dir())  # one per user, shared by every experiment
    import numba.core.config as _numba_config

    _numba_config.CACHE_DIR = _os.environ["NUMBA_CACHE_DIR"]  # numba read the environment when imported
from ..ffcv_required import require_ffcv as _require_ffcv

_require_ffcv("torchstrap_runtime.data (the seeded ops, the Loader and .beton files)")
from . import _ffcv_import  # noqa: F401  (first: imports FFCV without its typed-dict compile)
from ffcv.loader import OrderOption

from . import ffcv_fixes

ffcv_fixes.apply()

from .color_jitter import RandomColorJitter
from .cutout import Cutout
from .decoders import SimpleRGBImageDecoder
from .erasing import RandomErasing
from .gaussian_blur import RandomGaussianBlur
from .grayscale import RandomGrayscale
from .flip import RandomHorizontalFlip, RandomVerticalFlip
from .invert import RandomInvert
from .loader import Loader
from .normalize_on_device import NormalizeOnDevice, batch_device
from .random_resized_crop import RandomResizedCrop
from .sample_index import SampleIndexDecoder
from .solarization import RandomSolarization
from .translation import RandomTranslation
from .writers import beton_info, check_beton, write_dataset, write_digits, write_image_files, write_image_folder
from .sources import SOURCES, SourceError, prepare, read_classes

__all__ = [
    "Loader", "OrderOption", "write_dataset", "write_digits", "write_image_folder", "write_image_files",
    "check_beton", "beton_info", "prepare", "read_classes", "SOURCES", "SourceError", "NormalizeOnDevice", "batch_device",
    "SimpleRGBImageDecoder", "RandomResizedCrop", "RandomColorJitter", "RandomErasing", "RandomTranslation",
    "RandomSolarization", "RandomGrayscale", "RandomHorizontalFlip", "RandomVerticalFlip", "RandomInvert",
    "RandomGaussianBlur", "SampleIndexDecoder", "Cutout",
]
