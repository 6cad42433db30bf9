"""Bilinear resize of uint8 HxWx3 images as PIL's Image.resize(BILINEAR) does it (what torchvision's
RandomResizedCrop does to PIL images): a triangle filter widened by the scale when shrinking (antialiased),
weights in 22-bit fixed point, the horizontal pass first, each pass rounded to uint8."""
import math

import numpy as np
from numba import njit

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
