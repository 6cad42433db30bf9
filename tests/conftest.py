"""Suite-wide fixtures."""

import sys

import pytest
import torch
from fastargs.state import set_current_config

from torchstrap_runtime.config import Config, get_config


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
def generated_tasks(tmp_path_factory):
    """`generated_tasks(task)`: (package, what its import declares) of a generated experiment of that task
    (package `task_<task>`, one per session). The import runs under a copy of the global config, so the
    experiment's sections are not left declared for the tests that do not ask for them."""
    from experiments import import_experiment, make_experiment

    import torchstrap_runtime.launcher  # noqa: F401  (the runtime's own sections stay in the global config)
    import torchstrap_runtime.sections  # noqa: F401

    made: dict = {}

    def package_of(task: str) -> tuple[str, Config]:
        if task not in made:
            name = "task-" + task
            exp = make_experiment(tmp_path_factory.mktemp(name), {"task": task, "project_name": name}, digits=False)
            previous = get_config()
            set_current_config(declarations_of(previous))
            try:
                package = import_experiment(exp.path)
                declared = get_config()
            finally:
                set_current_config(previous)
            made[task] = package, declared
        return made[task]

    return package_of


def declarations_of(config: Config) -> Config:
    """A Config with the sections and params of `config`, and no values."""
    copy = Config()
    copy.sections, copy.entries = dict(config.sections), dict(config.entries)
    return copy


@pytest.fixture
def task_trainer(generated_tasks):
    """`task_trainer(task)`: the Trainer class of a generated experiment of that task, its config sections
    declared in the global config for this test only (afterwards the config holds the sections it held
    before, and no values of the others); tests subclass it for in-memory data."""
    import importlib

    undo = []

    def trainer_of(task: str) -> type:
        package, declared = generated_tasks(task)
        config = get_config()
        undo.append((config, dict(config.sections), dict(config.entries)))
        config.sections.update(declared.sections)
        config.entries.update(declared.entries)
        return importlib.import_module(f"{package}.trainer").Trainer

    yield trainer_of
    for config, sections, entries in reversed(undo):
        config.sections, config.entries = sections, entries
        for key in [key for key in config.content if key not in entries]:
            del config.content[key]
            config.sources.pop(key, None)
