"""RandomGaussianBlur: blur with a Gaussian of random sigma, with probability p (torchvision's GaussianBlur)."""
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from numba import njit, prange

from .base import SeededTransform, check_probability, check_range
from .image_kernels import COPY, flip_image
from .rng import sample_key, uniform, uniform_range


@njit(cache=True, inline="always")
def reflect(i: int, n: int) -> int:
    """Index i mirrored into [0, n) without repeating the edge (torch's 'reflect' padding: dcb|abcd|cba)."""
    if n == 1:
        return 0
    period = 2 * n - 2
    i = abs(i) % period
    return period - i if i >= n else i


@njit(cache=True, inline="always")
def gaussian_weights(size: int, sigma: float) -> np.ndarray:
    """Normalised exp(-x^2 / (2 sigma^2)) at x = -(size-1)/2 .. (size-1)/2."""
    half = (size - 1) * 0.5
    w = np.empty(size)
    for j in range(size):
        x = (j - half) / sigma
        w[j] = math.exp(-0.5 * x * x)
    return w / w.sum()


@njit(cache=True, nogil=True)
def blur_image(image, out, size_x: int, size_y: int, sigma: float):
    """out = image convolved with the separable Gaussian (reflect padding), rounded half up.

    Rows first, then columns, in float64; each pass runs over a whole (reflect-padded) row of w * 3 values at
    a time, so the inner loops are contiguous and vectorise."""
    h, w = image.shape[0], image.shape[1]
    wx, wy = gaussian_weights(size_x, sigma), gaussian_weights(size_y, sigma)
    rx, ry, n = size_x // 2, size_y // 2, w * 3
    padded = np.empty((w + 2 * rx) * 3)
    rows = np.zeros((h, n))
    for y in range(h):
        for x in range(w + 2 * rx):
            source = reflect(x - rx, w)
            for c in range(3):
                padded[x * 3 + c] = image[y, source, c]
        row = rows[y]
        for j in range(size_x):
            weight, offset = wx[j], j * 3
            for i in range(n):
                row[i] += weight * padded[offset + i]
    acc = np.empty(n)
    for y in range(h):
        acc[:] = 0.0
        for j in range(size_y):
            weight, source = wy[j], rows[reflect(y + j - ry, h)]
            for i in range(n):
                acc[i] += weight * source[i]
        for x in range(w):
            for c in range(3):
                out[y, x, c] = np.uint8(min(max(math.floor(acc[x * 3 + c] + 0.5), 0.0), 255.0))


@njit(cache=True, parallel=True, nogil=True)
def gaussian_blur_kernel(images, dst, indices, key, params):
    size_x, size_y, s_lo, s_hi, p = int(params[0]), int(params[1]), params[2], params[3], params[4]
    for i in prange(images.shape[0]):
        k = sample_key(key, indices[i])
        if uniform(k, 0) < p:
            blur_image(images[i], dst[i], size_x, size_y, uniform_range(k, 1, s_lo, s_hi))
        else:
            flip_image(images[i], dst[i], COPY)
    return dst


def check_kernel_size(kernel_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """(width, height) of the kernel from an int or a pair; both odd and positive, like torchvision."""
    sizes = (kernel_size, kernel_size) if isinstance(kernel_size, (int, np.integer)) else tuple(kernel_size)
    if len(sizes) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                  and s % 2 == 1 for s in sizes):
        raise ValueError(f"RandomGaussianBlur: kernel_size must be an odd int > 0 or a pair (width, height) of "
                         f"them, got {kernel_size!r}")
    return int(sizes[0]), int(sizes[1])


class RandomGaussianBlur(SeededTransform):
    """With probability `p` (draw 0 < p), blur with a Gaussian whose sigma is uniform in `sigma` (draw 1).

    As torchvision's GaussianBlur: a `kernel_size` (width, height) kernel of weights exp(-x^2 / (2 sigma^2))
    at x = -(size-1)/2 .. (size-1)/2, normalised, the same sigma along both axes, 'reflect' padding at the
    borders; the result is rounded to uint8 (here half up, in float64, separably: at most 1 off torchvision's
    float32 2-D convolution, on a few pixels).

    Args:
        kernel_size: odd int > 0, or (width, height) of odd ints.
        sigma: (min, max) with 0 < min <= max, or one float (a fixed sigma).
        p: probability of blurring a sample, in [0, 1].
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(gaussian_blur_kernel)

    def __init__(self, kernel_size: Union[int, Sequence[int]] = 23,
                 sigma: Union[float, Tuple[float, float]] = (0.1, 2.0), p: float = 0.5, seed: Optional[int] = None):
        super().__init__(seed)
        self.kernel_size = check_kernel_size(kernel_size)
        sigmas = (sigma, sigma) if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) else sigma
        self.sigma = check_range(sigmas, "RandomGaussianBlur", "sigma")
        if self.sigma[0] <= 0:
            raise ValueError(f"RandomGaussianBlur: sigma must be > 0, got {sigma!r}")
        self.p = check_probability(p, "RandomGaussianBlur")

    def params(self) -> np.ndarray:
        return np.array([*self.kernel_size, *self.sigma, self.p], dtype=np.float64)
