"""Suite-wide fixtures."""

import sys

import pytest
import torch
from fastargs.state import set_current_config

from torchstrap_runtime.config import get_config


@pytest.fixture(autouse=True)
def keep_global_config():
    """A test that replaces the global config (`reset_config()`) hands the previous one back afterwards, so
    later tests still find the sections that imports declared (test order must not matter)."""
    previous = get_config()
    yield
    set_current_config(previous)


@pytest.fixture(autouse=True)
def restore_process_state():
    """What a test changes in the process is put back afterwards: torch's thread count (FFCV's Loader and the
    toy trainers set it) and `sys.path` (tests that import bench/ or an experiment's src/)."""
    threads, path = torch.get_num_threads(), list(sys.path)
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    sys.path[:] = path
