"""The spine end to end: `make demo`'s path (generate, data, train, report) and what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import yaml

from torchstrap_runtime.loggers import read_log

CHECKOUT = Path(__file__).resolve().parents[1]


def test_demo_path_trains_digits_and_writes_the_run_folder(tmp_path):
    folder = tmp_path / "demo-experiment"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(CHECKOUT / ".numba_cache"), "PYTHONPATH": str(CHECKOUT)}  # this runtime
    result = subprocess.run([sys.executable, "-m", "torchstrap.generator.demo", str(folder), "--no-install", "--",
                             "--training.epochs", "6", "--logging.progress", "false"],
                            cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "validation top-1 accuracy:" in result.stdout and "run folder:" in result.stdout

    # a git repository with one commit (leftover Jinja: tests/test_generation_matrix.py)
    log = subprocess.run(["git", "log", "--oneline"], cwd=folder, capture_output=True, text=True, check=True)
    assert len(log.stdout.strip().splitlines()) == 1

    run = folder / "runs" / "demo"
    epochs = [r for r in read_log(run) if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(6))
    assert epochs[-1]["val_top1"] >= 0.90, epochs[-1]  # make demo's 20 epochs reach >= 0.95
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["training"]["epochs"] == 6 and config["git"]["dirty"] is False
    assert config["versions"]["template"]
    with h5py.File(run / "arrays.h5", "r") as f:
        assert f["val_confusion"].shape == (6, 10, 10)
    assert (run / "checkpoints" / "last.pt").exists() and (run / "curves.png").stat().st_size > 10_000


def test_generated_experiment_installs_as_a_package(tmp_path):
    torchstrap = Path(sys.executable).with_name("torchstrap")
    subprocess.run([str(torchstrap), "new", str(tmp_path / "exp"), "--defaults", "--vcs-ref", "HEAD"],
                   check=True, capture_output=True)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(tmp_path / "exp")], check=True, capture_output=True)
    assert (site / "my_experiment" / "trainer.py").exists()
    help_text = subprocess.run([sys.executable, "-m", "my_experiment.train", "--help"], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert help_text.returncode == 0, help_text.stderr
    assert "optimizer" in help_text.stdout and "augmentation" in help_text.stdout


def test_copier_copy_gives_the_same_experiment_as_torchstrap_new(tmp_path):
    copier = Path(sys.executable).with_name("copier")
    torchstrap = Path(sys.executable).with_name("torchstrap")
    subprocess.run([str(torchstrap), "new", str(tmp_path / "b"), "--defaults", "--vcs-ref", "HEAD"],
                   check=True, capture_output=True)
    # `torchstrap new` records the interpreter it runs on (`python`) and the torchstrap it came from
    # (`torchstrap_requirement`): copier is given the same answers
    answers = yaml.safe_load((tmp_path / "b" / ".copier-answers.yml").read_text())
    assert Path(answers["python"]).is_file() and answers["torchstrap_requirement"].startswith("torchstrap")
    given = [arg for key in ("python", "torchstrap_requirement") for arg in ("-d", f"{key}={answers[key]}")]
    subprocess.run([str(copier), "copy", "--defaults", "--quiet", "--vcs-ref", "HEAD", *given,
                    str(CHECKOUT), str(tmp_path / "a")], check=True, capture_output=True)
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    # identical, but for the template commit id when the checkout has uncommitted changes (copier commits them)
    without_commit = lambda text: [line for line in text.splitlines() if not line.startswith("_commit:")]
    for rel in files(tmp_path / "a"):
        a, b = (tmp_path / "a" / rel).read_text(), (tmp_path / "b" / rel).read_text()
        assert (without_commit(a) == without_commit(b)) if rel.name == ".copier-answers.yml" else (a == b), rel
