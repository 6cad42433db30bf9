"""decode_jpegs: whole-image JPEG decoding with the decoders' libjpeg-turbo kernel, one core (the doctor's
decode ceiling)."""
from numba import njit

from .native import jpeg_crop_resize


@njit(cache=True, nogil=True)
def decode_jpegs(blob, offsets, sizes, heights, widths, scratch, out):
    """Decode JPEG i (bytes blob[offsets[i]:offsets[i] + sizes[i]], heights[i] x widths[i]) whole into `out`,
    one after the other; returns how many failed."""
    failures = 0
    for i in range(len(offsets)):
        source = blob[offsets[i]:offsets[i] + sizes[i]]
        failures += jpeg_crop_resize(source.ctypes.data, source.size, 0, 0, heights[i], widths[i],
                                     scratch.ctypes.data, scratch.size, out.ctypes.data, heights[i], widths[i]) != 0
    return failures
