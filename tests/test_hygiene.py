"""Tests leave the process as they found it, and numba's caches stay out of the package folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MARKER = "/nonexistent/torchstrap-hygiene-marker"
BEFORE: dict = {}


def test_a_test_that_changes_threads_and_sys_path():
    """Changes both on purpose, as FFCV's Loader (torch threads) and bench/experiment imports (sys.path) do."""
    BEFORE["threads"] = torch.get_num_threads()
    torch.set_num_threads(1 if BEFORE["threads"] != 1 else 2)
    sys.path.insert(0, MARKER)


def test_the_next_test_finds_them_restored():
    """Runs after the one above (file order): the conftest fixture has put both back."""
    assert MARKER not in sys.path
    assert torch.get_num_threads() == BEFORE["threads"]


def test_numba_caches_default_outside_the_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    code = ("import numpy as np, numba; from torchstrap_runtime.data import rng; rng.mix64(np.uint64(1)); "
            "print(numba.config.CACHE_DIR)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    cache = tmp_path / "torchstrap" / "numba"
    assert out.stdout.strip() == str(cache)
    assert list(cache.rglob("rng.mix64-*.nbi")), "the cached kernel is written under the user's cache folder"
