"""The data pipelines' numba kernels, compiled once per installation into a shared cache.

Every seeded op's kernel, and FFCV's plain ops (`data.loader.compile_op`), are compiled with `cache=True`
into numba's cache folder, `cache_dir()`: NUMBA_CACHE_DIR when it is set, else
$XDG_CACHE_HOME/torchstrap/numba (~/.cache/torchstrap/numba). numba files each kernel under the path of
its source file, so each installation of torchstrap has its own entries there, and every experiment run
with that installation reuses them: the compile is paid once, not once per experiment.

`warm(experiment)` pays it ahead of time: it runs the experiment's own training and validation loaders (its
data.py and configs/default.yaml) for one batch each over small temporary .beton files of raw and of JPEG
images, so every kernel its pipelines call is compiled for the types they call it with. `torchstrap new`
runs it (`python -m torchstrap_runtime.kernel_cache EXPERIMENT`), unless `is_warm(experiment)`: a marker in
the cache says this installation already warmed the same pipelines.

    python -m torchstrap_runtime.kernel_cache path/to/experiment
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from . import __version__

RUNTIME = Path(__file__).resolve().parent
# the experiment's files that decide which kernels its loaders call, and with which types
EXPERIMENT_FILES = ("src/*/data.py", "src/*/config.py", "configs/default.yaml")


def cache_dir() -> Path:
    """Where numba caches the kernels: NUMBA_CACHE_DIR, else the user's cache folder ($XDG_CACHE_HOME or
    ~/.cache, then torchstrap/numba), never the installed package's folder (it may be read-only)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "torchstrap" / "numba"


def experiment_package(experiment: Path) -> str | None:
    """The package name of a generated experiment (its src/<package>/data.py), or None."""
    found = sorted(experiment.glob("src/*/data.py"))
    return found[0].parent.name if len(found) == 1 else None


def fingerprint(experiment: Path) -> str:
    """What the compiled kernels depend on: this installation (its path, version and the data sources' times),
    Python, numba and FFCV, and the experiment's pipeline files (their contents)."""
    parts = [__version__, str(RUNTIME), sys.version]
    for dist in ("numba", "ffcv", "numpy"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} none")
    sources = sorted((RUNTIME / "data").glob("*.py")) + sorted((RUNTIME / "methods").rglob("*.py"))
    parts += [f"{p.relative_to(RUNTIME)} {p.stat().st_mtime_ns}" for p in sources]
    for pattern in EXPERIMENT_FILES:
        parts += [f"{p.relative_to(experiment)}\n{p.read_text()}" for p in sorted(experiment.glob(pattern))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def marker(experiment: Path) -> Path:
    return cache_dir() / "torchstrap-warmed" / fingerprint(Path(experiment).resolve())


def is_warm(experiment: str | Path) -> bool:
    """Whether this installation already compiled the kernels of pipelines like this experiment's."""
    return marker(Path(experiment)).exists()


def small_betons(folder: Path, image_size: int) -> dict[str, Path]:
    """Eight image_size x image_size images of two classes, stored raw and as JPEG."""
    import numpy as np

    from .data.writers import write_dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, image_size, image_size, 3), dtype=np.uint8)
    labels = np.arange(8) % 2
    return {mode: write_dataset(folder / f"{mode}.beton", images, labels, write_mode=mode) for mode in ("raw", "jpg")}


def first_batches(loader) -> None:
    """One batch of `loader` (a KNNValLoader: of each of its loaders)."""
    for part in getattr(loader, "loaders", None) or [loader]:
        iterator = iter(part)
        next(iterator)
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def warm(experiment: str | Path) -> float:
    """Compile every kernel the experiment's training and validation loaders call (see the module docstring);
    write the marker `is_warm` reads. Returns the seconds it took."""
    start = time.perf_counter()
    experiment = Path(experiment).resolve()
    package = experiment_package(experiment)
    if package is None:
        raise ValueError(f"{experiment} is no generated experiment (no src/<package>/data.py)")
    sys.path.insert(0, str(experiment / "src"))
    from .config import config_as_dict

    config = importlib.import_module(f"{package}.config")
    loaders = importlib.import_module(f"{package}.data")  # imports torchstrap_runtime.data: numba's cache folder
    with tempfile.TemporaryDirectory(prefix="torchstrap_warm_") as tmp:
        for mode in ("raw", "jpg"):
            path = str(Path(tmp) / f"{mode}.beton")
            config.load(["--data.train_path", path, "--data.val_path", path, "--data.batch_size", "4",
                         "--data.val_batch_size", "4"], description="warm")
            if mode == "raw":
                small_betons(Path(tmp), config_as_dict()["data"]["image_size"])
            first_batches(loaders.train_loader())
            first_batches(loaders.val_loader())
    done = marker(experiment)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(f"{experiment}\n")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m torchstrap_runtime.kernel_cache EXPERIMENT_FOLDER", file=sys.stderr)
        return 2
    if is_warm(argv[0]):
        print(f"the data kernels of {argv[0]} are already compiled in {cache_dir()}")
        return 0
    seconds = warm(argv[0])
    print(f"compiled the data kernels of {argv[0]} into {cache_dir()} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
