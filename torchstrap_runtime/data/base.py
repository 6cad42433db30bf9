"""Base classes of the seeded ops and the checks of their parameters.

Each op is one file: its class (the parameters, checked here) and its batch kernel. Per-image kernels that
several ops share are in `image_kernels.py`; the C++ functions are reached through `native.py`.

A seeded op is an FFCV `Operation` whose compiled function receives, after FFCV's usual arguments,
the dataset indices of the batch, a 64-bit key for (op seed, op stream, epoch) and the op's parameters
as a float64 array. Our `Loader` passes all three (see `loader.py`); the kernels derive per-sample
randomness with `rng.sample_key`.

    transform:  kernel(images, dst, indices, key, params) -> batch
    decoder:    fn(indices, memory, metadata, storage_state, key, params) -> batch

A transform's `kernel` is a module-level numba function compiled with `cache=True`: its machine code
is reused across loaders and processes, since nothing op-specific is baked into it.

Inside stock `ffcv.Loader` the ops work too, without the seeding guarantees: `generate_code()` (what FFCV
calls) wraps the function so that each batch draws its key from numba's own unseeded generator, so `seed`
and the epoch are ignored there. FFCV's keyword names (`FFCV_ALIASES`, e.g. `flip_prob`) are accepted.
"""
import functools
import inspect
from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
from numba.core.dispatcher import Dispatcher

from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from .rng import stream_id


def check_seed(seed: Optional[int], owner: str) -> Optional[int]:
    """Validate a seed: None or a non-negative int (numpy integers too) below 2**63."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"{owner}: seed must be None or an int in [0, 2**63), got {seed!r}")
    return int(seed)


def check_probability(p: float, owner: str, name: str = "p") -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {p!r}")
    return float(p)


def check_range(values, owner: str, name: str, low: float = 0.0) -> Tuple[float, float]:
    """A (min, max) pair with low <= min <= max."""
    try:
        a, b = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name} must be a pair (min, max), got {values!r}") from None
    if not low <= a <= b:
        raise ValueError(f"{owner}: {name} must satisfy {low} <= min <= max, got {values!r}")
    return a, b


def check_scale_ratio(scale, ratio, owner: str) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """A box's (area fraction, aspect ratio) ranges: 0 < scale min <= max <= 1, 0 < ratio min <= max."""
    scale_range, ratio_range = check_range(scale, owner, "scale"), check_range(ratio, owner, "ratio")
    if scale_range[0] <= 0 or scale_range[1] > 1:
        raise ValueError(f"{owner}: scale must satisfy 0 < min <= max <= 1, got {scale!r}")
    if ratio_range[0] <= 0:
        raise ValueError(f"{owner}: ratio must satisfy 0 < min <= max, got {ratio!r}")
    return scale_range, ratio_range


FFCV_ALIASES = {"flip_prob": "p", "jitter_prob": "p", "gray_prob": "p", "solarization_prob": "p"}  # FFCV: ours


def accept_ffcv_names(init: Callable) -> Callable:
    """`init` taking FFCV's keyword names (`FFCV_ALIASES`) for the parameters it has."""
    accepted = inspect.signature(init).parameters
    aliases = {alias: name for alias, name in FFCV_ALIASES.items() if name in accepted}
    if not aliases:
        return init

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        for alias, name in aliases.items():
            if alias in kwargs:
                if name in kwargs:
                    raise TypeError(f"{type(self).__name__}: pass {name} or its FFCV name {alias}, not both")
                kwargs[name] = kwargs.pop(alias)
        init(self, *args, **kwargs)

    return __init__


def stock_ffcv_code(code: Callable, params: np.ndarray, decoder: bool) -> Callable:
    """`code` (a seeded op's function) callable by stock `ffcv.Loader`: a fresh random key per batch."""
    if not isinstance(code, Dispatcher):
        code = Compiler.compile(code)
    if decoder:
        def unseeded_decoder(batch_indices, memory, metadata, storage_state):
            key = np.uint64(np.random.randint(0, 2**62))
            return code(batch_indices, memory, metadata, storage_state, key, params)
        return unseeded_decoder

    def unseeded_transform(images, dst, indices):
        key = np.uint64(np.random.randint(0, 2**62))
        return code(images, dst, indices, key, params)

    unseeded_transform.with_indices = True  # stock FFCV then passes the batch's dataset indices
    return unseeded_transform


class Seeded:
    """Mixin: `seed` (None = fresh entropy per Loader) and `stream` (per-class constant).

    Subclasses define `seeded_code()`, the function our Loader calls; `generate_code()` adapts it for stock FFCV.
    """

    stream: int = 0
    seed: Optional[int] = None

    def params(self) -> np.ndarray:
        """The op's parameters as the float64 array its compiled function receives."""
        return np.zeros(0)

    def seeded_code(self) -> Callable:
        """The function our Loader calls, with the key and parameters after FFCV's arguments."""
        raise NotImplementedError

    def generate_code(self) -> Callable:
        """What stock `ffcv.Loader` calls: `seeded_code()` with a fresh key per batch (no seeding guarantees)."""
        return stock_ffcv_code(self.seeded_code(), self.params(), decoder=not isinstance(self, SeededTransform))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.stream = stream_id(cls.__name__)
        if not hasattr(cls.__init__, "__wrapped__"):
            cls.__init__ = accept_ffcv_names(cls.__init__)


class SeededTransform(Seeded, Operation):
    """A seeded transform on uint8 NHWC batches that writes its result into a buffer of the same shape.

    Subclasses set `kernel` (a cached numba function, see the module docstring) and `params()`.
    """

    kernel: Callable = None

    def __init__(self, seed: Optional[int] = None):
        super().__init__()
        self.seed = check_seed(seed, type(self).__name__)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if k not in ("metadata", "memory_read", "field"))
        return f"{type(self).__name__}({params})"

    def seeded_code(self) -> Callable:
        return self.kernel

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        shape = previous_state.shape
        if shape is None or len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"{type(self).__name__} needs uint8 HxWx3 images from a decoder before it, "
                             f"got shape {shape}")
        return replace(previous_state, jit_mode=True), AllocationQuery(shape, previous_state.dtype)


class WithProbability:
    """Mixin for an op applied to each sample with probability `p` (draw 0 < p): `p` checked, `params()` = [p]."""

    def __init__(self, p: float = 0.5, seed: Optional[int] = None):
        super().__init__(seed)
        self.p = check_probability(p, type(self).__name__)

    def params(self) -> np.ndarray:
        return np.array([self.p])


class SeededInPlaceTransform(SeededTransform):
    """A seeded pixel-wise transform that edits the batch in place (its kernel gets dst=None)."""

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        state, _ = super().declare_state_and_memory(previous_state)
        return state, None
