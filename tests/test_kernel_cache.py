"""A new experiment starts without compiling: FFCV imported in any order compiles nothing, FFCV's plain ops are
cached like ours, and `torchstrap new` compiles the new experiment's kernels once per installation into the shared
cache, so its first training run compiles nothing (torchstrap_runtime.kernel_cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit, prange

from experiments import template_repo
from torchstrap.generator.cli import main, new_experiment
from torchstrap.generator.template_source import CHECKOUT
from torchstrap_runtime import kernel_cache
from torchstrap_runtime.data.loader import cacheable_closure


def child_env(cache: Path, *paths: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHSTRAP_DEBUG", "MAKEFLAGS", "MAKELEVEL", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in (*paths, CHECKOUT)), NUMBA_CACHE_DIR=str(cache))
    return env


def cached_kernels(cache: Path) -> set[str]:
    """numba's index and compiled-code files: a kernel compiled again (or under a new key) adds an .nbc file."""
    return {p.name for p in cache.rglob("*.nb[ic]")}


def test_ffcv_imported_before_the_data_package_builds_a_plain_dict(tmp_path):
    """The generated data.py imports ffcv before torchstrap_runtime.data: FFCV's typed-dict compile is avoided."""
    code = ("import torchstrap_runtime.errors; from ffcv.fields.decoders import IntDecoder; "
            "import ffcv.fields.rgb_image as r; print(type(r.IMAGE_MODES).__name__, sorted(r.IMAGE_MODES))")
    done = subprocess.run([sys.executable, "-c", code], env=child_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "dict ['jpg', 'raw']", done.stdout


def test_closures_of_plain_values_are_cacheable_and_compiled_functions_are_not():
    table, helper = np.zeros((256, 3), np.float32), njit(lambda x: x)

    def make(value):
        def op(images, out, indices):
            return value, prange
        return op

    assert cacheable_closure(make(table)) and cacheable_closure(make((3, "raw", 1.5)))
    assert not cacheable_closure(make(helper)) and not cacheable_closure(make(np.zeros(1 << 20)))
    assert not cacheable_closure(make(object()))


LOADER = """
import sys, numpy as np, torch
from ffcv.fields.decoders import IntDecoder
from ffcv.transforms import NormalizeImage, ToTensor
from torchstrap_runtime.data import Loader, SimpleRGBImageDecoder, write_dataset
path = sys.argv[1]
rng = np.random.default_rng(0)
write_dataset(path, rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), np.arange(8) % 2)
pipelines = {"image": [SimpleRGBImageDecoder(), NormalizeImage(np.array([1., 2, 3]), np.array([4., 5, 6]), np.float32),
                       ToTensor()], "label": [IntDecoder(), ToTensor()]}
images, labels = next(iter(Loader(path, batch_size=8, num_workers=2, pipelines=pipelines)))
print(float(images.sum()), labels.flatten().tolist())
"""


def test_ffcv_plain_ops_are_compiled_into_the_cache_once(tmp_path):
    cache = Path(os.environ.get("NUMBA_CACHE_DIR", CHECKOUT / ".numba_cache"))  # the suite's: our kernels are there
    runs = [subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "small.beton")], env=child_env(cache),
                           capture_output=True, text=True, timeout=900) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout
    names = cached_kernels(cache)
    assert any("normalize_convert_parallel" in n for n in names) and any("BasicDecoder" in n for n in names), names


def test_the_warm_marker_follows_the_experiments_pipeline_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    tpl = template_repo(tmp_path / "tpl")
    exp = new_experiment(tmp_path / "exp", {"use_slurm": False}, template=str(tpl))
    twin = new_experiment(tmp_path / "twin", {"use_slurm": False}, template=str(tpl))
    other = new_experiment(tmp_path / "other", {"use_slurm": False, "dataset": "cifar10"}, template=str(tpl))
    assert kernel_cache.experiment_package(exp) == "my_experiment"
    assert kernel_cache.fingerprint(exp) == kernel_cache.fingerprint(twin) != kernel_cache.fingerprint(other)
    before = kernel_cache.fingerprint(exp)
    data_py = exp / "src" / "my_experiment" / "data.py"
    data_py.write_text(data_py.read_text() + "\n# an edit\n")
    assert kernel_cache.fingerprint(exp) != before and not kernel_cache.is_warm(exp)
    assert kernel_cache.marker(exp).parent == tmp_path / "cache" / "torchstrap-warmed"
    assert "NUMBA_CACHE_DIR" not in (exp / "Makefile").read_text().split("# numba caches")[0]


@pytest.mark.slow  # compiles every kernel of the default pipelines into an empty cache: a minute or more
def test_new_compiles_the_kernels_once_and_the_first_run_compiles_nothing(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    tpl = template_repo(tmp_path / "tpl")
    assert main(["new", str(tmp_path / "first"), "--defaults", "--template", str(tpl), "--vcs-ref", "HEAD"]) == 0
    assert "Compiling the data pipeline's kernels" in capsys.readouterr().out
    second = tmp_path / "second"
    assert main(["new", str(second), "--defaults", "--template", str(tpl), "--vcs-ref", "HEAD"]) == 0
    assert "Compiling" not in capsys.readouterr().out and kernel_cache.is_warm(second)
    compiled = cached_kernels(cache)
    assert compiled
    env = child_env(cache, second / "src")
    done = subprocess.run([sys.executable, "scripts/prepare_data.py"], cwd=second, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "my_experiment.train", "--training.fast_dev_run", "true",
                           "--logging.progress", "false"], cwd=second, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cached_kernels(cache) == compiled, "the first run of a second experiment compiled kernels of its own"
