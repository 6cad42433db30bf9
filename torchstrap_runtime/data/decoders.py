"""SimpleRGBImageDecoder: FFCV's plain decoder, with a disk-cached numba kernel for raw images."""
from typing import Callable

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.fields.rgb_image import SimpleRGBImageDecoder as FFCVSimpleRGBImageDecoder
from numba import njit, prange


@njit(cache=True, parallel=True, nogil=True)
def decode_raw_kernel(batch_indices, destination, metadata, storage_state):
    """Copy raw HxWx3 images out of the memory-mapped .beton (FFCV's OS-cache state: file bytes first)."""
    file_bytes = storage_state[0]
    for i in prange(len(batch_indices)):
        field = metadata[batch_indices[i]]
        height, width, start = np.int64(field["height"]), np.int64(field["width"]), np.int64(field["data_ptr"])
        destination[i] = file_bytes[start:start + height * width * 3].reshape(height, width, 3)
    return destination[:len(batch_indices)]


class SimpleRGBImageDecoder(FFCVSimpleRGBImageDecoder):
    """Decode constant-size RGB images as they are stored (uint8 HxWx3), no randomness.

    When every image of the field is stored raw and the Loader memory-maps the file (`os_cache=True`,
    FFCV's default), decoding is a numba kernel compiled once into NUMBA_CACHE_DIR: nothing to compile
    when a Loader is built. Otherwise (JPEG, or os_cache=False) it is FFCV's decoder.
    """

    os_cache: bool = False  # set by our Loader before it generates code

    def generate_code(self) -> Callable:
        if self.os_cache and np.all(self.metadata["mode"] == IMAGE_MODES["raw"]):
            return decode_raw_kernel
        return super().generate_code()
