"""A generated experiment follows the conventions researchers know from other templates: a LICENSE, ruff and
pre-commit that pass on the generated code, and a CI workflow whose commands pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from experiments import make_experiment, template_repo
from torchstrap.generator.lifecycle import check_experiment, new_experiment

TASKS = ("supervised", "ssl-multiview", "metric-learning")
CI_COMMANDS = ("ruff check .", "pre-commit run --all-files", "make test PY=python", "torchstrap check")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return template_repo(tmp_path_factory.mktemp("conventions") / "tpl")


def tool(name: str) -> str:
    """A development tool of the experiment's dev extra (installed with `pip install -e ".[dev]"`)."""
    beside = Path(sys.executable).parent / name   # the test's own venv first: make test does not activate it
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (the experiment's dev extra brings it)")
    return found


def ci_commands(exp) -> list[str]:
    workflow = yaml.safe_load((exp / ".github" / "workflows" / "ci.yml").read_text())
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


@pytest.mark.parametrize("task", TASKS)
def test_lint_hooks_and_ci_commands_pass_on_a_fresh_experiment(tmp_path, template, task):
    exp = make_experiment(tmp_path, {"task": task, "project_name": f"conv-{task}"}, digits=False,
                          template=template).path
    assert set(CI_COMMANDS) <= set(ci_commands(exp)), ci_commands(exp)
    ruff = subprocess.run([tool("ruff"), "check", "--no-cache", "."], cwd=exp, capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout
    active_venv = {**os.environ, "PATH": f"{Path(tool('ruff')).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    hooks = subprocess.run([tool("pre-commit"), "run", "--all-files"], cwd=exp, capture_output=True, text=True,
                           timeout=300, env=active_venv)  # its hooks run the environment's ruff
    assert hooks.returncode == 0 and "ruff check" in hooks.stdout, hooks.stdout + hooks.stderr
    assert check_experiment(exp).ok, "torchstrap check: up to date with its template, nothing left to merge"
    # the experiment's own tests (`make test`) run for every task in tests/test_generation_matrix.py


@pytest.mark.parametrize("license_id, first_line", [("MIT", "MIT License"), ("BSD-3-Clause", "BSD 3-Clause License"),
                                                   ("None", None)])
def test_license_answer(tmp_path, template, license_id, first_line):
    exp = new_experiment(tmp_path / "exp", {"license": license_id, "author_name": "Ada Lovelace"},
                         template=str(template))
    project = tomllib.loads((exp / "pyproject.toml").read_text())["project"]
    if first_line is None:
        assert not (exp / "LICENSE").exists() and "license" not in project
        return
    text = (exp / "LICENSE").read_text()
    assert text.startswith(first_line) and "Copyright (c) Ada Lovelace" in text and project["license"] == license_id
