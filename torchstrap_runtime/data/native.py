"""numba bindings of the native kernels in `_kernels.cpp` (built with the package by setup.py).

The kernels are declared as external symbols (`numba.types.ExternalFunction`), resolved by name in the
library loaded here, rather than as ctypes function pointers: numba can then cache the ops that call them
in NUMBA_CACHE_DIR (a pointer baked into machine code is not cacheable), so a second launch compiles nothing.
"""
import importlib.util

import llvmlite.binding
from numba import types

def library_path() -> str:
    """Path of the compiled `_kernels` library; a clear error when the package was not built."""
    spec = importlib.util.find_spec("torchstrap_runtime.data._kernels")
    if spec is None or not spec.origin:
        raise ImportError("torchstrap_runtime.data._kernels is not built: reinstall torchstrap from its source "
                          "folder (`make setup`, or `pip install -e .`), which compiles torchstrap_runtime/data/"
                          "_kernels.cpp against libjpeg-turbo and OpenCV (apt-get install libopencv-dev "
                          "libjpeg-dev pkg-config)")
    return spec.origin


llvmlite.binding.load_library_permanently(library_path())

u32, i32, i64, u64, ptr = types.uint32, types.int32, types.int64, types.uint64, types.voidptr

# (jpeg, jpeg_size, top, left, height, width, scratch, scratch_size, out, out_height, out_width) -> status
jpeg_crop_resize = types.ExternalFunction(
    "torchstrap_jpeg_crop_resize", i32(ptr, u64, u32, u32, u32, u32, ptr, u64, ptr, u32, u32))
# (image, image_height, image_width, top, left, height, width, out, out_height, out_width) -> status
resize_area = types.ExternalFunction(
    "torchstrap_resize_area", i32(ptr, u32, u32, u32, u32, u32, u32, ptr, u32, u32))
# (image, image_row_step, out, out_row_step, height, width, flip: 0 copy, 1 left-right, 2 upside down)
flip = types.ExternalFunction("torchstrap_flip", types.void(ptr, i64, ptr, i64, u32, u32, i32))
