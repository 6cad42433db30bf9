"""Per-image kernels that several seeded ops share, compiled by numba with `cache=True`.

    flip_image(image, out, flip)         copy one image as is (0), mirrored left-right (1) or upside down (2):
                                         the two flips, and RandomGaussianBlur's copy of unblurred samples
    solarize_image(image, threshold)     in place, v >= threshold -> 255 - v: RandomSolarization, RandomInvert

An op's own batch kernel lives in the op's file; the C++ functions are reached through `native.py`.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from .native import flip as native_flip

COPY, LEFT_RIGHT, UPSIDE_DOWN = 0, 1, 2  # the `flip` argument of flip_image


@njit(cache=True, nogil=True)
def flip_image(image, out, flip):
    """out = one HxWx3 uint8 image as is (flip 0), mirrored left-right (1) or upside down (2).

    OpenCV's copy/flip when pixels are packed (faster than numba's own array copy, docs/performance.md),
    plain loops for any other layout.
    """
    height, width = image.shape[0], image.shape[1]
    if (image.strides[1] == 3 and image.strides[2] == 1 and image.strides[0] > 0
            and out.strides[1] == 3 and out.strides[2] == 1 and out.strides[0] > 0):
        native_flip(image.ctypes.data, image.strides[0], out.ctypes.data, out.strides[0], height, width, flip)
        return
    for y in range(height):
        source_y = height - 1 - y if flip == UPSIDE_DOWN else y
        for x in range(width):
            source_x = width - 1 - x if flip == LEFT_RIGHT else x
            for c in range(3):
                out[y, x, c] = image[source_y, source_x, c]


def solarize_image(image: np.ndarray, threshold: int) -> None:
    """In place: every value v >= threshold becomes 255 - v (threshold 0 inverts the image, 256 changes nothing).
    This Python version documents it; inside numba kernels the overload below runs."""
    high = image >= threshold
    image[high] = 255 - image[high]


@overload(solarize_image)
def _solarize_image(image, threshold):
    """A flat loop over a C-contiguous image (which LLVM vectorizes), else any layout."""
    if isinstance(image, types.Array) and image.layout == "C":
        def flat(image, threshold):
            if threshold > 255:
                return
            t, values = np.uint8(threshold), image.reshape(-1)
            for j in range(values.size):
                v = values[j]
                values[j] = np.uint8(255) - v if v >= t else v
        return flat

    def strided(image, threshold):
        for index in np.ndindex(image.shape):
            v = image[index]
            if v >= threshold:
                image[index] = 255 - v
    return strided
