"""Import FFCV without the numba typed-dict compile its image field does at import time (~5 s a process).

`ffcv/fields/rgb_image.py` runs `IMAGE_MODES = numba.typed.Dict()` at module level, which makes numba
compile its typed-dict machinery in every fresh process: about 5 s of the 8 s of `import ffcv` on a 2-core
machine, and numba's disk cache does not cover it. FFCV (and this package) only read IMAGE_MODES from
Python (`IMAGE_MODES['jpg']`), so a plain dict behaves the same. `import_ffcv()` imports FFCV once with
`numba.typed.Dict` standing for `dict` during that import only; when FFCV is already imported it does nothing.
Measured by bench/bench_startup.py.
"""
import sys


def import_ffcv() -> None:
    """Import the ffcv package, its IMAGE_MODES built as a plain dict."""
    if "ffcv.fields.rgb_image" in sys.modules:
        return
    import numba.typed

    typed_dict = numba.typed.Dict  # resolve numba's lazy attribute first (imports its typed-dict modules)
    numba.typed.Dict = dict
    try:
        import ffcv.fields.rgb_image  # noqa: F401  (imports the whole ffcv package)
    finally:
        numba.typed.Dict = typed_dict


import_ffcv()
