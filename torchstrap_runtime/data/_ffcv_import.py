"""Import FFCV without the numba compile it runs at import, and build Loaders without a reader compile.

1. `import_ffcv()` imports FFCV through `torchstrap_runtime.ffcv_import_hook` (installed when the package is
   imported): its IMAGE_MODES is a plain dict, so the import compiles nothing.
2. FFCV's OS-cache memory manager compiles its sample reader eagerly and uncached each time a Loader is
   built. `cache_os_reader()` makes it return `os_cache_read`, the same two lines compiled
   lazily with `cache=True` (no explicit signature: typed from the read-only memory map, and no interned
   numba type is mutated; see ffcv_fixes.py), so a second launch loads it from NUMBA_CACHE_DIR.
Same batches either way. Measured by bench/bench_startup.py.
"""
import numpy as np
from numba import njit


def import_ffcv() -> None:
    """Import the ffcv package, its IMAGE_MODES built as a plain dict."""
    from .. import ffcv_import_hook

    ffcv_import_hook.install()
    import ffcv.fields.rgb_image  # noqa: F401  (imports the whole ffcv package)


@njit(cache=True, fastmath=True, nogil=True, error_model="numpy")
def os_cache_read(address, mem_state):
    """FFCV's OSCacheManager reader: the bytes of the sample stored at `address` of the memory-mapped file."""
    size = mem_state[2][np.searchsorted(mem_state[1], address)]
    return mem_state[0][address:address + size]


def cache_os_reader() -> None:
    """Make `OSCacheManager.compile_reader` return `os_cache_read` (ffcv_fixes.apply keeps it)."""
    from ffcv.memory_managers.os_cache import OSCacheManager
    from ffcv.pipeline.compiler import Compiler

    if getattr(OSCacheManager.compile_reader, "torchstrap_cached", False):
        return
    compile_uncached = OSCacheManager.compile_reader

    def compile_reader(self):
        return os_cache_read if Compiler.is_enabled else compile_uncached(self)

    compile_reader.torchstrap_cached = True
    OSCacheManager.compile_reader = compile_reader


import_ffcv()
cache_os_reader()
