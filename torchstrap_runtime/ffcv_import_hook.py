"""`ffcv.fields.rgb_image` imported with a plain dict for its IMAGE_MODES, whoever imports FFCV first.

That module runs `IMAGE_MODES = numba.typed.Dict()` at import, which makes numba compile its typed-dict
machinery in every fresh process (seconds; numba's disk cache does not cover it). FFCV and torchstrap only
read IMAGE_MODES from Python (`IMAGE_MODES['jpg']`), so a plain dict behaves the same. `install()` (run when
`torchstrap_runtime` is imported) adds a finder that executes that one module with `numba.typed.Dict`
standing for `dict`, so an experiment that imports `ffcv` before `torchstrap_runtime.data` does not pay it.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

MODULE = "ffcv.fields.rgb_image"


class PlainDictLoader(importlib.abc.Loader):
    """Runs FFCV's own loader for the module with `numba.typed.Dict` replaced by `dict` meanwhile."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import numba.typed

        typed_dict = numba.typed.Dict  # resolve numba's lazy attribute first (imports its typed-dict modules)
        numba.typed.Dict = dict
        try:
            self.loader.exec_module(module)
        finally:
            numba.typed.Dict = typed_dict


class PlainDictFinder(importlib.abc.MetaPathFinder):
    """Finds `ffcv.fields.rgb_image` where the path finder would, with `PlainDictLoader` as its loader."""

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = PlainDictLoader(spec.loader)
        return spec


def install() -> None:
    """Put the finder first on `sys.meta_path` (once)."""
    if not any(isinstance(finder, PlainDictFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, PlainDictFinder())
