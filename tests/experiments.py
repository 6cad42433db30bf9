"""A generated experiment for tests that run it as a user does: a tagged git clone of this checkout's template,
`new_experiment` from it, the digits .beton files where its default config reads them, and the environment
of its subprocesses (this checkout's sources on PYTHONPATH, never another install)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from torchstrap.generator.cli import new_experiment
from torchstrap.generator.template_repo import build_template_repo, tag
from torchstrap.generator.template_source import CHECKOUT
from torchstrap_runtime.data import write_digits


def subprocess_env(*paths: Path) -> dict[str, str]:
    """os.environ with `paths` as PYTHONPATH, a NUMBA_CACHE_DIR and no TORCHSTRAP_DEBUG (tracebacks off)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths),
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(CHECKOUT / ".numba_cache"))}
    env.pop("TORCHSTRAP_DEBUG", None)
    return env


def resolved_config(exp: Path, *args: str) -> dict:
    """The config a run of the experiment at `exp` resolves (`--print-config`, with `args`): the declared
    defaults, its configs/default.yaml, then `args`."""
    package = next(exp.glob("src/*/train.py")).parent.name
    done = subprocess.run([sys.executable, "-m", f"{package}.train", *args, "--print-config"], cwd=exp,
                          env=subprocess_env(exp / "src", CHECKOUT), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load(done.stdout)


def template_repo(folder: Path) -> Path:
    """A git repository of this checkout's template, tagged v1.0.0."""
    repo = build_template_repo(folder)
    tag(repo, "v1.0.0")
    return repo


@dataclass
class Experiment:
    path: Path           # the generated experiment
    root: Path           # the folder holding it; runs go to root / "runs"
    train: Path | None   # the digits .beton files (None without digits)
    val: Path | None
    env: dict[str, str]  # for its subprocesses: its src/ and this checkout on PYTHONPATH

    def run(self, *argv: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
        """`python *argv` in the experiment folder (`env`: extra variables)."""
        return subprocess.run([sys.executable, *argv], cwd=self.path, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def config(self, *args: str) -> dict:
        """The config its train module resolves with `args` (`--print-config`)."""
        return resolved_config(self.path, *args)

    def train_argv(self, *args: str) -> list[str]:
        """The python argv of its train module with configs/default.yaml on the digits, no progress bar, runs
        under root / "runs", then `args`."""
        package = next(self.path.glob("src/*/train.py")).parent.name
        return ["-m", f"{package}.train", "-C", "configs/default.yaml", "--data.train_path", str(self.train),
                "--data.val_path", str(self.val), "--logging.progress", "false", "--logging.folder",
                str(self.root / "runs"), *args]

    def run_train(self, *args: str, **run) -> subprocess.CompletedProcess:
        """Its train module (`train_argv`), to its end."""
        return self.run(*self.train_argv(*args), **run)

    def start_train(self, *args: str, stderr: Path, **popen) -> subprocess.Popen:
        """Its train module (`train_argv`) started in the background, its stderr into the file `stderr`."""
        with open(stderr, "w") as err:
            return subprocess.Popen([sys.executable, *self.train_argv(*args)], cwd=self.path, env=self.env,
                                    stdout=subprocess.DEVNULL, stderr=err, text=True, **popen)


def make_experiment(root: Path, answers: dict, digits: bool = True, template: Path | None = None) -> Experiment:
    """The experiment of `answers` in root / "exp", from `template` (default: a fresh one in root / "tpl"), with
    the digits .beton files in its data/digits."""
    exp = new_experiment(root / "exp", answers, template=str(template or template_repo(root / "tpl")))
    paths = write_digits(exp / "data" / "digits") if digits else {"train": None, "val": None}
    return Experiment(exp, root, paths["train"], paths["val"], subprocess_env(exp / "src", CHECKOUT))


def import_experiment(exp: Path) -> str:
    """Import a generated experiment's package from its src/ (its config sections and trainer); its name."""
    import importlib

    package = next(exp.glob("src/*/trainer.py")).parent.name
    sys.path.insert(0, str(exp / "src"))
    importlib.import_module(f"{package}.config")
    importlib.import_module(f"{package}.trainer")
    return package
