"""A generated experiment's README, followed as written: every command of its quick start runs, for each dataset
answer with small real-format data (CIFAR archive, image folder); `make train` and `make eval` run again without
`DATA_PATH` once `make data` wrote the .beton files; `make eval` evaluates into the run's own `eval/` folder; the
Makefile's Python is the interpreter that generated the experiment, checked with one sentence."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataset_files import make_cifar10, make_image_folder
from experiments import resolved_config, template_repo
from torchstrap.generator.cli import main, new_experiment
from torchstrap.generator.template_source import CHECKOUT
from torchstrap_runtime.runs import load_runs

# Sizes the runs through make's ARGS variable (read from the environment), so the commands stay as written.
QUICK = "--training.epochs 1 --logging.progress false --data.num_workers 1"
SMALL = {"digits": "", "cifar10": " --data.batch_size 8 --data.val_batch_size 8",
         "image-folder": " --data.batch_size 6 --data.val_batch_size 6 --data.image_size 64"}


@pytest.fixture(scope="module")
def tpl(tmp_path_factory) -> Path:
    return template_repo(tmp_path_factory.mktemp("documented") / "tpl")


def make_env(args: str = "") -> dict[str, str]:
    """The user's shell: no virtual environment active, this checkout reachable, ARGS sizing the runs."""
    # not inside another make (the suite runs under `make test`): MAKELEVEL would add "Entering directory" lines
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "TORCHSTRAP_DEBUG", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PY")}
    env.update(PYTHONPATH=str(CHECKOUT), NUMBA_CACHE_DIR=str(CHECKOUT / ".numba_cache"), ARGS=args)
    return env


def shell(exp: Path, command: str, args: str = "", timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=exp, env=make_env(args), capture_output=True, text=True,
                          timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{done.args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def quick_start(readme: str) -> list[str]:
    """The commands of the README's `## Quick start` fenced bash block (comments dropped)."""
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)[1]
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


def small_data(dataset: str, where: Path) -> Path | None:
    """Small data in the dataset's real format: what DATA_PATH names."""
    if dataset == "cifar10":
        make_cifar10(where / "cifar-10-python.tar.gz", per_batch=8)
        return where / "cifar-10-python.tar.gz"
    if dataset == "image-folder":
        make_image_folder(where / "images", per_class=8)
        return where / "images"
    return None


def with_data_path(command: str, data: Path | None) -> str:
    """The README's command with the placeholder DATA_PATH=... replaced by the test's data."""
    if "DATA_PATH=" not in command:
        return command
    assert data is not None, command
    return re.sub(r"DATA_PATH=\S+", f"DATA_PATH={shlex.quote(str(data))}", command)


def eval_runs(exp: Path) -> list[Path]:
    return sorted(p.parent for p in exp.glob("runs/*/eval/*/config.json"))


def follow_readme(tpl: Path, where: Path, dataset: str, whole: bool = True) -> Path:
    """Generate, then run every quick-start command as written; then `make train` and `make eval` again.
    `whole=False` leaves out `make test` (the experiment's own suite, about a minute) and the second round."""
    exp = new_experiment(where / "exp", {"task": "supervised", "dataset": dataset, "use_slurm": False},
                         template=str(tpl))
    data = small_data(dataset, where)
    commands = quick_start((exp / "README.md").read_text())
    assert commands[0].startswith("make data") and ("DATA_PATH=" in commands[0]) == (dataset != "digits")
    assert {"make train", "make eval", "make test"} <= set(commands), commands
    for command in commands if whole else [c for c in commands if c != "make test"]:
        ok(shell(exp, with_data_path(command, data), QUICK + SMALL[dataset]))
    if not whole:
        assert len(load_runs([exp / "runs"], use_sacct=False)) == 1 and len(eval_runs(exp)) == 1
        return exp
    for command in ("make train", "make eval"):  # once the .beton files exist: no DATA_PATH, no data step
        done = ok(shell(exp, command, QUICK + SMALL[dataset]))
        assert "prepare_data.py" not in done.stdout, done.stdout
    trained = load_runs([exp / "runs"], use_sacct=False)
    assert len(trained) == 2 and all(run.status == "finished" for run in trained), [r.status for r in trained]
    evaluations = eval_runs(exp)
    assert len(evaluations) == 2 and all(p.parent.parent in [r.path for r in trained] for p in evaluations)
    for folder in evaluations:
        records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert any(r.get("kind") == "eval" and 0.0 <= r["val_top1"] <= 1.0 for r in records), records
    return exp


def test_digits_readme_quick_start_trains_and_evaluates(tpl, tmp_path):
    follow_readme(tpl, tmp_path, "digits", whole=False)


@pytest.mark.slow  # about 3 minutes for digits, more for a ResNet-18 on CIFAR's format or an image folder (2 cores)
@pytest.mark.parametrize("dataset", ["digits", "cifar10", "image-folder"])
def test_readme_runs_as_written(tpl, tmp_path, dataset):
    exp = follow_readme(tpl, tmp_path, dataset)
    if dataset == "image-folder":
        assert resolved_config(exp)["model"]["num_classes"] == 3


def test_image_folder_data_sets_num_classes_warns_and_is_written_once(tpl, tmp_path):
    exp = new_experiment(tmp_path / "exp", {"dataset": "image-folder", "use_slurm": False}, template=str(tpl))
    images = small_data("image-folder", tmp_path)
    before = (exp / "configs" / "default.yaml").read_text()
    done = ok(shell(exp, f"make data DATA_PATH={images}"))
    assert "model.num_classes 10 -> 3" in done.stdout
    assert re.search(r"warning: data/image-folder/val.beton has 1 image\(s\) of class '\w+' \(3 images, 3 classes\)",
                     done.stderr), done.stderr
    after = (exp / "configs" / "default.yaml").read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith("  num_classes: 3 ") and len(changed[0][1]) == len(changed[0][0])
    assert yaml.safe_load(after)["model"]["num_classes"] == 3
    # train and eval only need the .beton files: no DATA_PATH, no data step (dry runs: the real ones are slow)
    (exp / "runs" / "one" / "checkpoints").mkdir(parents=True)
    (exp / "runs" / "one" / "checkpoints" / "last.pt").write_bytes(b"")
    for target in ("train", "eval"):
        done = ok(shell(exp, f"make -n {target}"))
        assert "prepare_data" not in done.stdout and "my_experiment.train" in done.stdout, done.stdout
    assert "--logging.folder runs/one/eval" in shell(exp, "make -n eval").stdout


def test_make_eval_without_runs_is_one_sentence_and_writes_nothing(tpl, tmp_path):
    exp = new_experiment(tmp_path / "exp", {"use_slurm": False}, template=str(tpl))
    done = shell(exp, "make eval")
    assert done.returncode == 2 and "no run to evaluate: runs/ holds no run" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout
    done = shell(exp, "make eval RUN=runs/gone")
    assert done.returncode == 2 and "runs/gone has no checkpoints/best.pt or checkpoints/last.pt" in done.stderr
    assert not (exp / "runs").exists() and not (exp / "data").exists()


def test_makefile_uses_the_generating_python_and_checks_another(tpl, tmp_path):
    exp = new_experiment(tmp_path / "exp", {"use_slurm": False}, template=str(tpl))
    answers = yaml.safe_load((exp / ".copier-answers.yml").read_text())
    assert answers["python"] == sys.executable
    env = {**make_env(), "PATH": "/usr/bin:/bin"}  # the first `python` on PATH is not the generating one
    done = subprocess.run(["make", "-n", "train"], cwd=exp, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and f"{sys.executable} scripts/prepare_data.py" in done.stdout, done.stderr
    bare = tmp_path / "bare" / "bin"
    bare.mkdir(parents=True)
    (bare / "python").symlink_to("/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable)
    env = {**env, "VIRTUAL_ENV": str(bare.parent), "PYTHONPATH": ""}  # a venv without torchstrap, active
    done = subprocess.run(["make", "data"], cwd=exp, env=env, capture_output=True, text=True)
    if Path("/usr/bin/python3").exists() and subprocess.run(["/usr/bin/python3", "-c", "import torch"],
                                                            capture_output=True).returncode != 0:
        assert done.returncode == 2 and f"{bare / 'python'} cannot import torchstrap" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(["make", "-n", "data", f"PY={sys.executable}"], cwd=exp, env={**env, "PYTHONPATH": str(CHECKOUT)},
                          capture_output=True, text=True)
    assert done.returncode == 0 and f"{sys.executable} scripts/prepare_data.py" in done.stdout, done.stderr


def test_the_recorded_python_survives_an_update(tpl, tmp_path, capsys):
    exp = new_experiment(tmp_path / "exp", {"use_slurm": False, "python": "/opt/lab/bin/python"}, template=str(tpl))
    assert main(["update", str(exp), "-d", "dataset=cifar10"]) == 0, capsys.readouterr()
    assert yaml.safe_load((exp / ".copier-answers.yml").read_text())["python"] == "/opt/lab/bin/python"
    assert "RECORDED_PY := /opt/lab/bin/python\n" in (exp / "Makefile").read_text()
