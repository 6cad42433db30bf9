"""Counter-based randomness for the seeded ops.

Every random number is a pure function of (op seed, op stream, epoch, sample index, draw number):

    op_key     = mix(mix(mix(seed + GOLDEN) ^ stream) ^ (epoch + 1) * GOLDEN)      # Python, once per epoch
    sample_key = mix(op_key ^ mix((index + 1) * GOLDEN))                              # numba, once per sample
    uniform(d) = top 53 bits of mix(sample_key + (d + 1) * GOLDEN) / 2**53             # numba, once per draw

`mix` is the splitmix64 finaliser (a bijection of 64-bit integers with full avalanche), so neighbouring
seeds, epochs or indices give unrelated numbers. `stream` is a per-op-class constant: two different ops
given the same seed (a typical "one augmentation seed for the pipeline") still draw independently.
The numba functions are compiled with `cache=True`; the pure-Python twins (`*_py`) are the reference
the tests compare against.
"""
import os
import zlib

import numpy as np
from numba import njit

MASK64 = (1 << 64) - 1
GOLDEN_INT = 0x9E3779B97F4A7C15
M1_INT = 0xBF58476D1CE4E5B9
M2_INT = 0x94D049BB133111EB

GOLDEN = np.uint64(GOLDEN_INT)
M1 = np.uint64(M1_INT)
M2 = np.uint64(M2_INT)
S30, S27, S31, S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
ONE = np.uint64(1)
INV_2_53 = 1.0 / 9007199254740992.0


# ---------------------------------------------------------------- numba (used inside the ops' kernels)
@njit(cache=True, inline="always")
def mix64(z: np.uint64) -> np.uint64:
    """splitmix64 finaliser: a well-mixing bijection of uint64."""
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    return z ^ (z >> S31)


@njit(cache=True, inline="always")
def sample_key(op_key: np.uint64, index) -> np.uint64:
    """Key of one sample (its index in the dataset) under one op and epoch."""
    return mix64(op_key ^ mix64((np.uint64(index) + ONE) * GOLDEN))


@njit(cache=True, inline="always")
def uniform(key: np.uint64, draw: int) -> float:
    """Draw number `draw` of the sample with key `key`, uniform in [0, 1)."""
    z = mix64(key + (np.uint64(draw) + ONE) * GOLDEN)
    return np.float64(z >> S11) * INV_2_53


@njit(cache=True, inline="always")
def uniform_range(key: np.uint64, draw: int, low: float, high: float) -> float:
    """Uniform in [low, high)."""
    return low + (high - low) * uniform(key, draw)


@njit(cache=True, inline="always")
def randint(key: np.uint64, draw: int, low: int, high: int) -> int:
    """Uniform integer in [low, high] (both included)."""
    span = high - low + 1
    value = low + int(uniform(key, draw) * span)
    return min(value, high)


# ---------------------------------------------------------------- pure Python (loader side, tests)
def mix64_py(z: int) -> int:
    """Python twin of `mix64` on unbounded ints."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * M1_INT) & MASK64
    z = ((z ^ (z >> 27)) * M2_INT) & MASK64
    return z ^ (z >> 31)


def op_key_py(seed: int, stream: int, epoch: int) -> int:
    """Key of one op (seed, stream) for one epoch; computed once per epoch by the Loader."""
    key = mix64_py(mix64_py(seed + GOLDEN_INT) ^ stream)
    return mix64_py(key ^ (((epoch + 1) * GOLDEN_INT) & MASK64))


def sample_key_py(op_key: int, index: int) -> int:
    return mix64_py(op_key ^ mix64_py(((index + 1) * GOLDEN_INT) & MASK64))


def uniform_py(key: int, draw: int) -> float:
    return (mix64_py(key + (draw + 1) * GOLDEN_INT) >> 11) * INV_2_53


def randint_py(key: int, draw: int, low: int, high: int) -> int:
    return min(low + int(uniform_py(key, draw) * (high - low + 1)), high)


def stream_id(name: str) -> int:
    """Stable per-op-class stream constant (crc32 of the class name; not Python's salted hash)."""
    return mix64_py(zlib.crc32(name.encode()))


def fresh_seed() -> int:
    """63 bits of OS entropy, for `seed=None`."""
    return int.from_bytes(os.urandom(8), "little") >> 1
