"""torchstrap as a pip user meets it: a wheel installed in a fresh venv (no checkout on the path) generates an
experiment, the next version's wheel updates it with the researcher's edit kept, and the experiment installs
into another fresh venv from that wheel alone and trains one epoch on the digits."""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.version import Version

from installs import build_wheel, clean_env, copy_sources, fresh_venv, shared_packages
from torchstrap.generator.template_repo import commit, edit
from torchstrap_runtime import __version__

TRAINER = "src/wheel_exp/trainer.py"
TEMPLATE_TRAINER = "template/src/{{package_name}}/{% if task == 'supervised' %}trainer.py{% endif %}.jinja"
MY_EDIT = ("            loss = self.criterion(outputs, labels)\n        return loss",
           "            loss = self.criterion(outputs, labels) * 1.0  # my edit\n        return loss")
TEMPLATE_DOCSTRING = ("The prediction eval_step scores;", "The prediction eval_step scores (next version);")


def run(*argv: str | Path, cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def next_minor(version: str) -> str:
    release = Version(version).release
    return f"{release[0]}.{release[1] + 1}.0"


def installed_from(python: Path, env: dict[str, str]) -> tuple[str, str]:
    """(the folder torchstrap_runtime is imported from, its version) in the environment of `python`."""
    out = run(python, "-c", "import torchstrap_runtime as t; print(t.__file__); print(t.__version__)",
              cwd=python.parent, env=env).stdout.split()
    return out[0], out[1]


@pytest.mark.slow  # ~6 min on 2 busy cores, most of it numba compiling the fresh install's kernels
def test_wheel_new_update_and_an_experiment_that_installs_alone(tmp_path):
    timings = {}
    start = time.perf_counter()
    source = copy_sources(tmp_path / "source")
    wheel = build_wheel(source, tmp_path / "wheel-1")
    shared = shared_packages(tmp_path / "shared")
    env = clean_env(XDG_DATA_HOME=str(tmp_path / "data"), HOME=str(tmp_path / "home"))
    python = fresh_venv(tmp_path / "venv", shared)
    run(python, "-m", "pip", "install", "-q", wheel, cwd=tmp_path, env=env)
    where, version = installed_from(python, env)
    assert where.startswith(str(tmp_path / "venv")) and version == __version__, where
    timings["wheel and venv"] = time.perf_counter() - start

    torchstrap = python.parent / "torchstrap"
    assert run(torchstrap, "--version", cwd=tmp_path, env=env).stdout.strip() == f"torchstrap {__version__}"
    run(torchstrap, "new", "exp", "--defaults", "-d", "project_name=wheel-exp", cwd=tmp_path, env=env)
    exp = tmp_path / "exp"
    answers = yaml.safe_load((exp / ".copier-answers.yml").read_text())
    assert answers["_commit"] == f"v{__version__}"
    assert answers["_src_path"] == str(tmp_path / "data" / "torchstrap" / "template")
    assert answers["torchstrap_requirement"] == f"torchstrap @ {wheel.as_uri()}"
    edit(exp, TRAINER, *MY_EDIT)
    commit(exp, "my edit of train_step")
    timings["new"] = time.perf_counter() - start - sum(timings.values())

    newer = next_minor(__version__)
    edit(source, "torchstrap_runtime/__init__.py", f'__version__ = "{__version__}"', f'__version__ = "{newer}"')
    edit(source, TEMPLATE_TRAINER, *TEMPLATE_DOCSTRING)
    edit(source, "template/README.md.jinja", "\n## ", "\nA section of the next version.\n\n## ")
    wheel_2 = build_wheel(source, tmp_path / "wheel-2")
    run(python, "-m", "pip", "install", "-q", wheel_2, cwd=tmp_path, env=env)
    assert run(torchstrap, "--version", cwd=tmp_path, env=env).stdout.strip() == f"torchstrap {newer}"
    out = run(torchstrap, "update", cwd=exp, env=env).stdout
    assert f"template v{__version__} -> v{newer}" in out, out
    trainer = (exp / TRAINER).read_text()
    assert MY_EDIT[1] in trainer and TEMPLATE_DOCSTRING[1] in trainer, "the edit is kept, the template's change in"
    assert "A section of the next version." in (exp / "README.md").read_text()
    requirement = tomllib.loads((exp / "pyproject.toml").read_text())["project"]["dependencies"]
    assert requirement == [f"torchstrap @ {wheel_2.as_uri()}"]
    commit(exp, "update to the next torchstrap")
    timings["update"] = time.perf_counter() - start - sum(timings.values())

    python_2 = fresh_venv(tmp_path / "venv-2", shared)
    alone = clean_env(PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_NO_BUILD_ISOLATION="0", HOME=str(tmp_path / "home"))
    run("make", "install", f"PY={python_2}", cwd=exp, env=alone)
    where, version = installed_from(python_2, alone)
    assert where.startswith(str(tmp_path / "venv-2")) and version == newer, where
    run("make", "data", f"PY={python_2}", cwd=exp, env=alone)
    timings["install the experiment"] = time.perf_counter() - start - sum(timings.values())
    run("make", "train", f"PY={python_2}", "ARGS=--training.epochs 1 --logging.progress false", cwd=exp, env=alone)
    (log,) = exp.glob("runs/*/log.jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any("val_top1" in r for r in records), records[-3:]
    timings["train one epoch"] = time.perf_counter() - start - sum(timings.values())
    print("  ".join(f"{name}: {seconds:.0f} s" for name, seconds in timings.items()))
