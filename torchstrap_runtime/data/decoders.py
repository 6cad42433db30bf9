"""SimpleRGBImageDecoder: FFCV's plain decoder, with a pure-numba path for raw (uncompressed) datasets."""
from typing import Callable

import numpy as np
from ffcv.fields.rgb_image import IMAGE_MODES
from ffcv.fields.rgb_image import SimpleRGBImageDecoder as FFCVSimpleRGBImageDecoder
from ffcv.pipeline.compiler import Compiler


class SimpleRGBImageDecoder(FFCVSimpleRGBImageDecoder):
    """Decode constant-size RGB images as they are stored (uint8 HxWx3), no randomness.

    When every image of the field is stored raw, the decode loop is plain numba (no C call), so its
    compiled code can be cached on disk (`NUMBA_CACHE_DIR`); JPEG datasets use FFCV's decoder.
    """

    def generate_code(self) -> Callable:
        if not np.all(self.metadata["mode"] == IMAGE_MODES["raw"]):
            return super().generate_code()
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        height, width = int(self.metadata["height"][0]), int(self.metadata["width"][0])

        def decode_raw(batch_indices, destination, metadata, storage_state):
            for dst_ix in my_range(len(batch_indices)):
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field["data_ptr"], storage_state)
                destination[dst_ix] = image_data.reshape(height, width, 3)
            return destination[:len(batch_indices)]

        decode_raw.is_parallel = True
        return decode_raw
