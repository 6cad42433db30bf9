"""Suite-wide fixtures."""

import pytest
from fastargs.state import set_current_config

from torchstrap_runtime.config import get_config


@pytest.fixture(autouse=True)
def keep_global_config():
    """A test that replaces the global config (`reset_config()`) hands the previous one back afterwards, so
    later tests still find the sections that imports declared (test order must not matter)."""
    previous = get_config()
    yield
    set_current_config(previous)
