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


@pytest.fixture(scope="session")
def task_trainer(tmp_path_factory):
    """`task_trainer(task)`: the Trainer class of a generated experiment of that task (package `task_<task>`,
    one per session), with its config sections declared; tests subclass it for in-memory data."""
    import importlib

    from experiments import import_experiment, make_experiment

    made: dict = {}

    def trainer_of(task: str) -> type:
        if task not in made:
            name = "task-" + task
            exp = make_experiment(tmp_path_factory.mktemp(name), {"task": task, "project_name": name}, digits=False)
            made[task] = import_experiment(exp.path)
        return importlib.import_module(f"{made[task]}.trainer").Trainer

    return trainer_of
