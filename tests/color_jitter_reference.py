"""Transcription of RandomColorJitter's per-pixel HSV kernel as it was before the table-driven rewrite (numba,
float64, the four changes applied per pixel): the reference the new kernel is checked against within one level,
and the named contender of bench/bench_color_jitter.py."""
import numpy as np
from numba import njit, prange

from torchstrap_runtime.data.rng import randint, sample_key, uniform, uniform_range


@njit(cache=True, inline="always")
def clip255(v: float) -> float:
    return min(max(v, 0.0), 255.0)


@njit(cache=True, inline="always")
def gray(r: float, g: float, b: float) -> float:
    return 0.299 * r + 0.587 * g + 0.114 * b


@njit(cache=True, inline="always")
def shift_hue(r: float, g: float, b: float, shift: float):
    """Rotate the hue of one RGB pixel (0..255 floats) by `shift` turns, via HSV."""
    mx, mn = max(r, g, b), min(r, g, b)
    delta = mx - mn
    if delta == 0.0:
        return r, g, b  # grey: no hue
    sat = delta / mx
    if mx == r:
        hue = ((g - b) / delta) % 6.0
    elif mx == g:
        hue = (b - r) / delta + 2.0
    else:
        hue = (r - g) / delta + 4.0
    hue = (hue / 6.0 + shift) % 1.0 * 6.0
    sector = min(int(hue), 5)
    f = hue - sector
    p, q, t = mx * (1.0 - sat), mx * (1.0 - sat * f), mx * (1.0 - sat * (1.0 - f))
    if sector == 0:
        return mx, t, p
    if sector == 1:
        return q, mx, p
    if sector == 2:
        return p, mx, t
    if sector == 3:
        return p, q, mx
    if sector == 4:
        return t, p, mx
    return mx, p, q


@njit(cache=True, nogil=True)
def jitter_in_order(image, k, bf, cf, sf, hf):
    """The four changes in an order drawn from draws 5-7 (a Fisher-Yates shuffle, like torchvision's
    randperm(4)), each over the whole image in float, clipped after each, rounded once at the end."""
    order = np.arange(4)
    for j in range(3, 0, -1):
        r = randint(k, 8 - j, 0, j)
        order[j], order[r] = order[r], order[j]
    h, w, _ = image.shape
    x = image.astype(np.float64)
    for step in order:
        if step == 0:
            for y in range(h):
                for c in range(w):
                    for ch in range(3):
                        x[y, c, ch] = clip255(bf * x[y, c, ch])
        elif step == 1:
            mean = 0.0
            for y in range(h):
                for c in range(w):
                    mean += gray(x[y, c, 0], x[y, c, 1], x[y, c, 2])
            mean /= h * w
            for y in range(h):
                for c in range(w):
                    for ch in range(3):
                        x[y, c, ch] = clip255(cf * x[y, c, ch] + (1 - cf) * mean)
        elif step == 2:
            for y in range(h):
                for c in range(w):
                    l = gray(x[y, c, 0], x[y, c, 1], x[y, c, 2])
                    for ch in range(3):
                        x[y, c, ch] = clip255(sf * x[y, c, ch] + (1 - sf) * l)
        elif hf != 0.0:
            for y in range(h):
                for c in range(w):
                    x[y, c, 0], x[y, c, 1], x[y, c, 2] = shift_hue(x[y, c, 0], x[y, c, 1], x[y, c, 2], hf)
    for y in range(h):
        for c in range(w):
            for ch in range(3):
                image[y, c, ch] = np.uint8(x[y, c, ch] + 0.5)


@njit(cache=True, parallel=True, nogil=True)
def per_pixel_color_jitter_kernel(images, dst, indices, key, params):
    b_lo, b_hi, c_lo, c_hi, s_lo, s_hi, hue, p = params[0], params[1], params[2], params[3], \
        params[4], params[5], params[6], params[7]
    n, h, w, _ = images.shape
    for i in prange(n):
        k = sample_key(key, indices[i])
        if uniform(k, 0) >= p:
            continue
        bf = uniform_range(k, 1, b_lo, b_hi)
        cf = uniform_range(k, 2, c_lo, c_hi)
        sf = uniform_range(k, 3, s_lo, s_hi)
        hf = uniform_range(k, 4, -hue, hue)
        if params[8] > 0:  # random_order
            jitter_in_order(images[i], k, bf, cf, sf, hf)
            continue
        mean = 0.0  # mean luma after the brightness change, for the contrast change
        for y in range(h):
            for x in range(w):
                mean += gray(clip255(bf * images[i, y, x, 0]), clip255(bf * images[i, y, x, 1]),
                             clip255(bf * images[i, y, x, 2]))
        mean /= h * w
        for y in range(h):
            for x in range(w):
                r = clip255(bf * images[i, y, x, 0])
                g = clip255(bf * images[i, y, x, 1])
                b = clip255(bf * images[i, y, x, 2])
                r, g, b = clip255(cf * r + (1 - cf) * mean), clip255(cf * g + (1 - cf) * mean), \
                    clip255(cf * b + (1 - cf) * mean)
                l = gray(r, g, b)
                r, g, b = clip255(sf * r + (1 - sf) * l), clip255(sf * g + (1 - sf) * l), clip255(sf * b + (1 - sf) * l)
                if hf != 0.0:
                    r, g, b = shift_hue(r, g, b, hf)
                images[i, y, x, 0] = np.uint8(r + 0.5)
                images[i, y, x, 1] = np.uint8(g + 0.5)
                images[i, y, x, 2] = np.uint8(b + 0.5)
    return images
