"""RandomResizedCrop: a decoder that crops a random region (area and aspect ratio drawn) and resizes it."""
import math
from typing import Callable, Optional, Tuple

import numpy as np
from numba import njit, prange
from ffcv.fields.rgb_image import IMAGE_MODES, ResizedCropRGBImageDecoder
from ffcv.pipeline.compiler import Compiler

from ._ffcv_import import os_cache_read
from .base import Seeded, check_scale_ratio, check_seed
from .native import jpeg_crop_resize, resize_area
from .rng import randint, sample_key, uniform_range

ATTEMPTS = 10  # like torchvision: 10 tries, then a central crop with the aspect ratio clamped
INTERPOLATIONS = ("area", "bilinear")  # OpenCV INTER_AREA (FFCV's), PIL bilinear (torchvision on PIL images)
JPG = IMAGE_MODES["jpg"]


@njit(cache=True, nogil=True)
def sample_crop(k, height, width, scale_lo, scale_hi, log_ratio_lo, log_ratio_hi):
    """(top, left, crop_height, crop_width) for the sample with key k. Draws 4a..4a+3 for attempt a."""
    area = float(height) * float(width)
    for attempt in range(ATTEMPTS):
        d = 4 * attempt
        target_area = area * uniform_range(k, d, scale_lo, scale_hi)
        aspect = math.exp(uniform_range(k, d + 1, log_ratio_lo, log_ratio_hi))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = randint(k, d + 2, 0, height - crop_h)
            left = randint(k, d + 3, 0, width - crop_w)
            return top, left, crop_h, crop_w
    in_ratio = float(width) / float(height)
    if in_ratio < math.exp(log_ratio_lo):
        crop_w = width
        crop_h = int(round(crop_w / math.exp(log_ratio_lo)))
    elif in_ratio > math.exp(log_ratio_hi):
        crop_h = height
        crop_w = int(round(crop_h * math.exp(log_ratio_hi)))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class RandomResizedCrop(Seeded, ResizedCropRGBImageDecoder):
    """Decoder: crop a random region of each image and resize it to `output_size`.

    The region's area is a uniform fraction in `scale` of the image's area (draw 4a), its aspect ratio
    width/height is log-uniform in `ratio` (draw 4a+1), its position uniform (draws 4a+2, 4a+3); up to
    10 attempts a = 0..9 until the region fits, then a central crop with the aspect ratio clamped into
    `ratio`. Crops are not forced square. Works on raw and JPEG images of any size.

    Args:
        output_size: (height, width) of the output images.
        scale: (min, max) fraction of the image's area, 0 < min <= max <= 1.
        ratio: (min, max) aspect ratio width/height, 0 < min <= max.
        interpolation: "area" (OpenCV's INTER_AREA, as FFCV) or "bilinear" (PIL's antialiased bilinear, what
            torchvision's RandomResizedCrop does to PIL images).
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    def __init__(self, output_size: Tuple[int, int], scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), seed: Optional[int] = None,
                 interpolation: str = "area"):
        size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
            raise ValueError(f"RandomResizedCrop: output_size must be (height, width) > 0, got {output_size!r}")
        super().__init__((int(size[0]), int(size[1])))
        self.scale, self.ratio = check_scale_ratio(scale, ratio, "RandomResizedCrop")
        self.seed = check_seed(seed, "RandomResizedCrop")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"RandomResizedCrop: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.interpolation = interpolation

    def __repr__(self) -> str:
        return (f"RandomResizedCrop(output_size={self.output_size}, scale={self.scale}, "
                f"ratio={self.ratio}, seed={self.seed}, interpolation={self.interpolation!r})")

    @property
    def get_crop_generator(self):
        return sample_crop

    def params(self) -> np.ndarray:
        return np.array([self.scale[0], self.scale[1], math.log(self.ratio[0]), math.log(self.ratio[1]),
                         float(INTERPOLATIONS.index(self.interpolation))])

    os_cache: bool = False  # set by our Loader before it generates code

    def seeded_code(self) -> Callable:
        if self.os_cache:  # memory-mapped file: the kernel compiled once into NUMBA_CACHE_DIR
            return random_resized_crop_kernel
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()

        def random_resized_crop(batch_indices, my_storage, metadata, storage_state, key, params):
            destination, scratch = my_storage
            status = np.zeros(len(batch_indices), dtype=np.int32)
            for i in my_range(len(batch_indices)):
                field = metadata[batch_indices[i]]
                status[i] = crop_resize(mem_read(field["data_ptr"], storage_state), field, sample_key(key, batch_indices[i]),
                                        params, scratch[i], destination[i])
            check_status(status, batch_indices)
            return destination[:len(batch_indices)]

        random_resized_crop.is_parallel = True
        return random_resized_crop


@njit(cache=True, nogil=True)
def crop_resize(data, field, k, params, scratch, out):
    """Draw the crop box of one sample (key k), decode only that box (JPEG) and resize it into `out`."""
    height, width = int(field["height"]), int(field["width"])
    top, left, crop_h, crop_w = sample_crop(k, height, width, params[0], params[1], params[2], params[3])
    if params[4] == 1:  # bilinear: the box at its own size (an equal-size INTER_AREA resize copies), then PIL's
        box = np.empty((crop_h, crop_w, 3), np.uint8)
        status = crop_resize_area(data, field, top, left, crop_h, crop_w, scratch, box)
        if status == 0:
            resize_bilinear(box, out)
        return status
    return crop_resize_area(data, field, top, left, crop_h, crop_w, scratch, out)


@njit(cache=True, nogil=True)
def crop_resize_area(data, field, top, left, crop_h, crop_w, scratch, out):
    height, width = int(field["height"]), int(field["width"])
    if field["mode"] == JPG:
        return jpeg_crop_resize(data.ctypes.data, data.size, top, left, crop_h, crop_w, scratch.ctypes.data,
                                scratch.size, out.ctypes.data, out.shape[0], out.shape[1])
    return resize_area(data.ctypes.data, height, width, top, left, crop_h, crop_w, out.ctypes.data,
                       out.shape[0], out.shape[1])


@njit(cache=True, nogil=True)
def check_status(status, batch_indices):
    """Raise for the first sample whose decode failed (the status codes of _kernels.cpp)."""
    for i in range(len(status)):
        if status[i] != 0:
            raise ValueError("RandomResizedCrop: sample could not be decoded (status -1: corrupt JPEG data; "
                             "-2: crop outside the image; -3: scratch buffer too small); sample index, status:",
                             batch_indices[i], status[i])


@njit(cache=True, parallel=True, nogil=True)
def random_resized_crop_kernel(batch_indices, my_storage, metadata, storage_state, key, params):
    """The decoder's function for memory-mapped files (FFCV's OS-cache reader inlined)."""
    destination, scratch = my_storage
    status = np.zeros(len(batch_indices), dtype=np.int32)
    for i in prange(len(batch_indices)):
        field = metadata[batch_indices[i]]
        status[i] = crop_resize(os_cache_read(field["data_ptr"], storage_state), field,
                                sample_key(key, batch_indices[i]), params, scratch[i], destination[i])
    check_status(status, batch_indices)
    return destination[:len(batch_indices)]


# ---------------------------------------------------------------- interpolation="bilinear"
# PIL's Image.resize(BILINEAR), what torchvision's RandomResizedCrop does to PIL images: a triangle filter
# widened by the scale when shrinking (antialiased), weights in 22-bit fixed point, the horizontal pass
# first, each pass rounded to uint8.
PRECISION_BITS = 32 - 8 - 2


@njit(cache=True, nogil=True)
def bilinear_weights(in_size: int, out_size: int):
    """(first input index, fixed-point weights [out_size, taps]) of PIL's bilinear filter along one axis."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = filter_scale  # the triangle's support is 1, widened when shrinking
    taps = int(math.ceil(support)) * 2 + 1
    first = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, taps), np.int64)
    raw = np.zeros(taps)
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        total = 0.0
        for j in range(hi - lo):
            t = abs((j + lo - center + 0.5) / filter_scale)
            raw[j] = 1.0 - t if t < 1.0 else 0.0
            total += raw[j]
        for j in range(hi - lo):
            v = raw[j] / total if total != 0.0 else raw[j]
            weights[o, j] = int(v * (1 << PRECISION_BITS) + (0.5 if v >= 0 else -0.5))
        first[o] = lo
    return first, weights


@njit(cache=True, inline="always")
def clip8(v: int) -> np.uint8:
    return np.uint8(min(max(v >> PRECISION_BITS, 0), 255))


@njit(cache=True, nogil=True)
def resample_width(image, out):
    """Every row of image filtered to out's width (PIL's bilinear weights), rounded to uint8."""
    first, weights = bilinear_weights(image.shape[1], out.shape[1])
    half, w = 1 << (PRECISION_BITS - 1), image.shape[1]
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            for c in range(3):
                s = half
                for j in range(weights.shape[1]):
                    if first[x] + j < w:
                        s += int(image[y, first[x] + j, c]) * weights[x, j]
                out[y, x, c] = clip8(s)


@njit(cache=True, nogil=True)
def resize_bilinear(image, out):
    """out (its own size) = PIL-bilinear resize of image, width first; an axis of equal size is copied."""
    h, w = image.shape[0], image.shape[1]
    rows = np.empty((h, out.shape[1], 3), np.uint8)
    if out.shape[1] == w:
        rows[:] = image
    else:
        resample_width(image, rows)
    if out.shape[0] == h:
        out[:] = rows
    else:  # the columns, as the rows of the transposed images
        resample_width(np.transpose(rows, (1, 0, 2)), np.transpose(out, (1, 0, 2)))
