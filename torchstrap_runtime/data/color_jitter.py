"""RandomColorJitter: random brightness, contrast, saturation and hue changes, with probability p."""
from typing import Optional

import numpy as np
from numba import njit, prange

from .base import SeededInPlaceTransform, check_probability
from .rng import randint, sample_key, uniform, uniform_range


@njit(cache=True, inline="always")
def clip255(v: float) -> float:
    return min(max(v, 0.0), 255.0)


@njit(cache=True, inline="always")
def gray(r: float, g: float, b: float) -> float:
    return 0.299 * r + 0.587 * g + 0.114 * b


# error_model="numpy": float division without Python's zero check, so that the loops compile to SIMD code
# (no divisor here is zero where its quotient is used).
@njit(cache=True, inline="always", error_model="numpy")
def shift_hue_row(r, g, b, shift: float):
    """Rotate the hue of each pixel (three float64 channel arrays, values 0..255) by `shift` turns, via HSV.

    torchvision's formulas with the value and saturation factored out: max and min stay, the middle channel
    is min + delta * f or max - delta * f (the same numbers as V(1 - S(1 - f)) and V(1 - Sf) but for
    rounding in the last bits), and hue is kept in sixths of a turn. Every branch is a selection, so the
    loop vectorises. Grey pixels have no hue and stay as they are."""
    sixths = 6.0 * shift
    for x in range(r.shape[0]):
        rv, gv, bv = r[x], g[x], b[x]
        mx = max(max(rv, gv), bv)
        mn = min(min(rv, gv), bv)
        delta = mx - mn
        grey = delta == 0.0
        is_r, is_g = mx == rv, mx == gv
        hue = ((gv - bv) if is_r else ((bv - rv) if is_g else (rv - gv))) / (1.0 if grey else delta)
        hue += sixths + (0.0 if is_r else (2.0 if is_g else 4.0))
        hue = hue - 6.0 if hue >= 6.0 else (hue + 6.0 if hue < 0.0 else hue)
        sector = min(int(hue), 5)
        rise = delta * (hue - sector)
        up, down = mn + rise, mx - rise
        ro = mx if (sector == 0 or sector == 5) else (down if sector == 1 else (up if sector == 4 else mn))
        go = up if sector == 0 else (down if sector == 3 else (mx if sector <= 2 else mn))
        bo = mn if sector <= 1 else (up if sector == 2 else (down if sector == 5 else mx))
        r[x] = rv if grey else ro
        g[x] = gv if grey else go
        b[x] = bv if grey else bo


@njit(cache=True, inline="always", error_model="numpy")
def change_planes(step, r, g, b, bf, cf, sf, hf, mean):
    """One of the four changes (0 brightness, 1 contrast with the given mean luma, 2 saturation, 3 hue) on
    pixels held as three float64 channel arrays, clipped; straight-line loops the compiler vectorises."""
    n = r.shape[0]
    if step == 0:
        for x in range(n):
            rv, gv, bv = r[x], g[x], b[x]
            r[x], g[x], b[x] = clip255(bf * rv), clip255(bf * gv), clip255(bf * bv)
    elif step == 1:
        for x in range(n):
            rv, gv, bv = r[x], g[x], b[x]
            r[x] = clip255(cf * rv + (1 - cf) * mean)
            g[x] = clip255(cf * gv + (1 - cf) * mean)
            b[x] = clip255(cf * bv + (1 - cf) * mean)
    elif step == 2:
        for x in range(n):
            rv, gv, bv = r[x], g[x], b[x]
            l = gray(rv, gv, bv)
            r[x] = clip255(sf * rv + (1 - sf) * l)
            g[x] = clip255(sf * gv + (1 - sf) * l)
            b[x] = clip255(sf * bv + (1 - sf) * l)
    elif hf != 0.0:
        shift_hue_row(r, g, b, hf)


BLOCK_PIXELS = 1024  # rows are taken in blocks of about this many pixels: three float64 blocks fit in L1


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def luma_sum(r, g, b) -> float:
    """Sum of the pixels' luma. It may be regrouped (vectorised): it can differ from a sum in pixel order in its
    last bits, which moves an output value by one level only if it lies that close to a rounding edge."""
    total = 0.0
    for x in range(r.shape[0]):
        total += gray(r[x], g[x], b[x])
    return total


@njit(cache=True, inline="always")
def load_rows(image, top, rows, scale, cf, mean, r, g, b):
    """Rows top..top+rows-1 of the uint8 image into three float64 channel blocks, each value v becoming
    clip(cf clip(scale v) + (1 - cf) mean): a brightness change then a contrast change, either of which is
    the identity with scale 1 or cf 1, mean 0. Each row is read as one flat run of values, so the loop
    vectorises."""
    w = image.shape[1]
    for y in range(rows):
        values, o = image[top + y].reshape(w * 3), y * w
        for x in range(w):
            r[o + x] = clip255(cf * clip255(scale * values[3 * x]) + (1 - cf) * mean)
            g[o + x] = clip255(cf * clip255(scale * values[3 * x + 1]) + (1 - cf) * mean)
            b[o + x] = clip255(cf * clip255(scale * values[3 * x + 2]) + (1 - cf) * mean)


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def rows_luma_sum(image, top, rows, scale) -> float:
    """Sum of the luma of rows top..top+rows-1 of the uint8 image, each value v taken as clip(scale v);
    regrouped like luma_sum."""
    w = image.shape[1]
    total = 0.0
    for y in range(rows):
        values = image[top + y].reshape(w * 3)
        for x in range(w):
            total += gray(clip255(scale * values[3 * x]), clip255(scale * values[3 * x + 1]),
                          clip255(scale * values[3 * x + 2]))
    return total


@njit(cache=True, inline="always")
def store_rows(image, top, rows, r, g, b, rounded):
    """The three channel blocks rounded half up into rows top..top+rows-1 of the image, through `rounded`
    (int32, one row of values) so that both loops vectorise."""
    w = image.shape[1]
    for y in range(rows):
        values, o = image[top + y].reshape(w * 3), y * w
        for x in range(w):
            rounded[3 * x] = np.int32(r[o + x] + 0.5)
            rounded[3 * x + 1] = np.int32(g[o + x] + 0.5)
            rounded[3 * x + 2] = np.int32(b[o + x] + 0.5)
        for j in range(w * 3):
            values[j] = rounded[j]


@njit(cache=True, nogil=True, error_model="numpy")
def jitter_image(image, order, bf, cf, sf, hf):
    """The four changes in `order` on one HxWx3 uint8 image, in float64, clipped after each, rounded once.

    The image goes through in blocks of rows held as three float64 channel blocks small enough for the L1
    cache, each change a loop the compiler vectorises. A first pass sums the luma as it is before contrast
    (contrast needs the mean of the whole image), a second pass runs contrast and the changes after it, then
    rounds. A brightness change that comes first is applied while loading. Only when another change comes
    before contrast are the values kept between the passes (three float64 planes of the whole image);
    otherwise the first pass only reads the image and the second applies contrast while loading."""
    h, w, _ = image.shape
    first = 1 if order[0] == 0 else 0
    scale = bf if first else 1.0  # a brightness change that comes first is applied while loading
    contrast = first
    while order[contrast] != 1:
        contrast += 1
    keep = contrast > first  # some change comes between the loading and contrast
    rows = max(1, min(h, BLOCK_PIXELS // w))
    block, rounded = np.empty((3, rows * w)), np.empty(w * 3, np.int32)
    planes = np.empty((3, h * w if keep else 0))
    total = 0.0
    for top in range(0, h, rows):
        n = min(rows, h - top)
        if not keep:
            total += rows_luma_sum(image, top, n, scale)
            continue
        o, m = top * w, n * w
        r, g, b = planes[0, o:o + m], planes[1, o:o + m], planes[2, o:o + m]
        load_rows(image, top, n, scale, 1.0, 0.0, r, g, b)
        for s in range(first, contrast):
            change_planes(order[s], r, g, b, bf, cf, sf, hf, 0.0)
        total += luma_sum(r, g, b)
    mean = total / (h * w)
    for top in range(0, h, rows):
        n = min(rows, h - top)
        o, m = top * w, n * w
        if keep:
            r, g, b = planes[0, o:o + m], planes[1, o:o + m], planes[2, o:o + m]
            change_planes(1, r, g, b, bf, cf, sf, hf, mean)
        else:  # contrast applied while loading
            r, g, b = block[0, :m], block[1, :m], block[2, :m]
            load_rows(image, top, n, scale, cf, mean, r, g, b)
        for s in range(contrast + 1, 4):
            change_planes(order[s], r, g, b, bf, cf, sf, hf, mean)
        store_rows(image, top, n, r, g, b, rounded)


@njit(cache=True, parallel=True, nogil=True)
def color_jitter_kernel(images, dst, indices, key, params):
    b_lo, b_hi, c_lo, c_hi, s_lo, s_hi, hue, p = params[0], params[1], params[2], params[3], \
        params[4], params[5], params[6], params[7]
    n = images.shape[0]
    for i in prange(n):
        k = sample_key(key, indices[i])
        if uniform(k, 0) >= p:
            continue
        bf = uniform_range(k, 1, b_lo, b_hi)
        cf = uniform_range(k, 2, c_lo, c_hi)
        sf = uniform_range(k, 3, s_lo, s_hi)
        hf = uniform_range(k, 4, -hue, hue)
        order = np.arange(4)
        if params[8] > 0:  # random_order: a Fisher-Yates shuffle on draws 5-7, like torchvision's randperm(4)
            for j in range(3, 0, -1):
                r = randint(k, 8 - j, 0, j)
                order[j], order[r] = order[r], order[j]
        image = np.ascontiguousarray(images[i])  # the batch's own memory unless it is not C-contiguous
        jitter_image(image, order, bf, cf, sf, hf)
        if image.ctypes.data != images[i].ctypes.data:
            images[i][:, :, :] = image
    return images


def factor_range(magnitude: float, name: str) -> tuple:
    if float(magnitude) < 0:
        raise ValueError(f"RandomColorJitter: {name} must be >= 0, got {magnitude!r}")
    return max(0.0, 1.0 - magnitude), 1.0 + magnitude


class RandomColorJitter(SeededInPlaceTransform):
    """With probability `p` (draw 0 < p), change brightness, contrast, saturation and hue, in that order.

    Factors are uniform: brightness in [max(0, 1-brightness), 1+brightness] (draw 1, v -> f v),
    contrast likewise (draw 2, v -> f v + (1-f) mean luma), saturation likewise (draw 3,
    v -> f v + (1-f) pixel luma), hue shift uniform in [-hue, hue] turns of the colour wheel (draw 4,
    via HSV). Values are clipped to [0, 255] after each step and rounded once at the end
    (torchvision's ColorJitter with a fixed order of its four changes). A magnitude of 0 disables that change.
    With `random_order`, the four changes come in a random order per sample (draws 5-7), as torchvision's.

    Args:
        brightness, contrast, saturation: magnitudes >= 0.
        hue: magnitude in [0, 0.5].
        p: probability of jittering a sample, in [0, 1].
        random_order: shuffle the order of the four changes per sample (torchvision's behaviour).
        seed: None (fresh entropy each time a Loader is built) or an int.
    """

    kernel = staticmethod(color_jitter_kernel)

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 0.8, seed: Optional[int] = None, random_order: bool = False):
        super().__init__(seed)
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        for name in ("brightness", "contrast", "saturation"):
            factor_range(getattr(self, name), name)
        if not 0.0 <= float(hue) <= 0.5:
            raise ValueError(f"RandomColorJitter: hue must be in [0, 0.5], got {hue!r}")
        self.hue = float(hue)
        self.p = check_probability(p, "RandomColorJitter")
        if not isinstance(random_order, bool):
            raise ValueError(f"RandomColorJitter: random_order must be true or false, got {random_order!r}")
        self.random_order = random_order

    def params(self) -> np.ndarray:
        return np.array([*factor_range(self.brightness, "brightness"), *factor_range(self.contrast, "contrast"),
                         *factor_range(self.saturation, "saturation"), self.hue, self.p,
                         float(self.random_order)])
