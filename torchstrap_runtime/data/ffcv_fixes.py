"""Work-around for an FFCV 1.0.2 bug, applied when `torchstrap_runtime.data` is imported.

FFCV's memory managers build their numba state types with `t = nb.uint8[::1]; t.mutable = False`.
`nb.uint8[::1]` is numba's shared (interned) array type, so every Loader built mutates a type object
that other compiled functions already use as a dictionary key: their hashes change, and numba later
fails with `KeyError: (Array(uint8, 1, 'C', ...), ...)` when it looks up a compiled signature (the
"Exception ignored in finalizer" noise of stock FFCV, and a crash once two loaders share a compiled
helper). The replacements below build the same types without mutating anything.
"""
import numba as nb
import numpy as np
from ffcv.memory_managers.os_cache import OSCacheManager
from ffcv.memory_managers.process_cache.manager import ProcessCacheManager
from ffcv.pipeline.compiler import Compiler


def readonly(dtype, ndim: int = 1) -> nb.types.Array:
    return nb.types.Array(dtype, ndim, "C", readonly=True)


def os_cache_state_type(self) -> nb.types.Tuple:
    """(file bytes, sorted pointers, sizes): what FFCV's mutation effectively produced."""
    return nb.types.Tuple([readonly(nb.uint8), nb.uint64[::1], nb.uint64[::1]])


def os_cache_compile_reader(self):
    """FFCV's reader (bytes of the allocation at `address`), with the read-only result type it ended up with."""

    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]

    return Compiler.compile(read, readonly(nb.uint8)(nb.uint64, self.state_type))


def process_cache_state_type(self) -> nb.types.Tuple:
    return nb.types.Tuple([readonly(nb.uint8, 2), readonly(nb.uint64), readonly(nb.uint64), readonly(nb.uint32)])


def apply() -> None:
    """Install the non-mutating state types (keeps `_ffcv_import`'s cached reader when it is installed)."""
    OSCacheManager.state_type = property(os_cache_state_type)
    if not getattr(OSCacheManager.compile_reader, "torchstrap_cached", False):
        OSCacheManager.compile_reader = os_cache_compile_reader
    ProcessCacheManager.state_type = property(process_cache_state_type)
