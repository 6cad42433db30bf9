"""Every task x model x use_slurm generates a project with no leftover Jinja whose own tests pass.

The template repository is built once from this checkout (real git, tagged v1.0.0); each combination is
generated with `new_experiment` and its own test suite runs in a fresh process (`python -m pytest` in the
generated folder, `src/` on the path). One combination per task runs in `make test`; the rest are slow.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import subprocess_env, template_repo
from torchstrap.generator.cli import new_experiment
from torchstrap.generator.template_source import CHECKOUT, git

QUESTIONS = yaml.safe_load((CHECKOUT / "copier.yml").read_text())
TASKS = QUESTIONS["task"]["choices"]
MODELS = [m for m in QUESTIONS["model"]["choices"] if m not in ("resnet18", "resnet34", "resnet50")]  # ResNets: test_template_datasets.py
FAST = {("supervised", "mlp", True), ("ssl-multiview", "mlp", False), ("metric-learning", "mlp", True)}  # cheapest model
VARIABLES = "|".join(k for k in QUESTIONS if not k.startswith("_")) + "|_copier"
LEFTOVER = re.compile(rf"\{{\{{-?\s*({VARIABLES})\b|\{{%-?\s*\w+|\{{#")
OWN_TESTS_TIMEOUT = 600


def combos() -> list:
    params = []
    for task, model, slurm in itertools.product(TASKS, MODELS, (True, False)):
        marks = () if (task, model, slurm) in FAST else (pytest.mark.slow,)
        params.append(pytest.param(task, model, slurm, marks=marks, id=f"{task}-{model}-{'slurm' if slurm else 'noslurm'}"))
    return params


@pytest.fixture(scope="module")
def tpl(tmp_path_factory) -> Path:
    return template_repo(tmp_path_factory.mktemp("matrix") / "tpl")


def leftover_jinja(exp: Path) -> list[str]:
    """`file:line` of every Jinja remnant (tags, comments, template variables, .jinja names)."""
    found = []
    for name in git("ls-files", cwd=exp).stdout.splitlines():
        if name.endswith(".jinja") or "{{" in name or "{%" in name:
            found.append(f"{name} (name)")
            continue
        try:
            text = (exp / name).read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if LEFTOVER.search(line)]
    return found


def slurm_files(exp: Path) -> list[str]:
    names = git("ls-files", cwd=exp).stdout.splitlines()
    return [n for n in names if any(word in n.lower() for word in ("slurm", "sbatch", "submit"))]


@pytest.mark.parametrize("task, model, use_slurm", combos())
def test_combination_generates_and_its_tests_pass(tpl, tmp_path, task, model, use_slurm):
    exp = new_experiment(tmp_path / "exp", {"task": task, "model": model, "use_slurm": use_slurm}, template=str(tpl))
    assert leftover_jinja(exp) == []
    answers = yaml.safe_load((exp / ".copier-answers.yml").read_text())
    assert (answers["task"], answers["model"], answers["use_slurm"]) == (task, model, use_slurm)
    assert yaml.safe_load((exp / "configs" / "default.yaml").read_text())["model"]["name"] == model

    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests"], cwd=exp,
                          env=subprocess_env(exp / "src", CHECKOUT), capture_output=True, text=True,
                          timeout=OWN_TESTS_TIMEOUT)
    assert done.returncode == 0, f"{exp.name}'s own tests failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"

    assert bool(slurm_files(exp)) == use_slurm, f"use_slurm={use_slurm} but SLURM files: {slurm_files(exp)}"
