"""Single-node multi-process training without SLURM: torchrun's environment reaches the Trainer (gloo on CPU),
and a generated experiment's `make train NPROC=2` runs it through torchrun (NPROC=1: plain python)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from torchstrap_runtime import launcher
from torchstrap_runtime.loggers import read_log

import test_cluster_toy as toy
from experiments import Experiment, make_experiment, subprocess_env
from test_resume import STEPS_PER_EPOCH, toy_config

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
OVERRIDES = dict(training={"epochs": 2}, toy={"dropout": 0.0}, optimizer={"lr": 0.05})


def test_torchrun_two_processes_match_one_process(tmp_path):
    """torchrun --nproc_per_node=2 on the toy workload (global batch 64 = 2 x 32) gives the 1-process weights."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        from torchstrap_runtime import launcher
        import test_cluster_toy as toy
        from test_resume import toy_config
        config = toy_config(Path({str(tmp_path / "runs")!r}), "two", **{OVERRIDES!r})
        result = launcher.run_training(config, toy.TRAINER)
        result["env"] = {{k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}}
        Path({str(tmp_path)!r}, f"rank{{os.environ['RANK']}}.json").write_text(json.dumps(result))
    """))
    done = subprocess.run([*TORCHRUN, str(script)], cwd=tmp_path, env=subprocess_env(ROOT, ROOT / "tests"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["env"]["WORLD_SIZE"], r["finished"]) for r in results] == [(0, "2", True), (1, "2", True)]

    assert launcher.run_training(toy_config(tmp_path / "runs", "one", **OVERRIDES), toy.TRAINER)["finished"]
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    s1, s2 = toy.final_state(one), toy.final_state(two)
    for key in s1:
        assert torch.allclose(s1[key].double(), s2[key].double(), rtol=1e-4, atol=1e-5), key
    rows = toy.log_rows(two)
    assert len(rows) == len(toy.log_rows(one)) == 2 * (STEPS_PER_EPOCH + 1)   # rank 0 writes, once
    assert json.loads((two / "config.json").read_text())["world_size"] == 2


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    """Its data is written by `make data`."""
    return make_experiment(tmp_path_factory.mktemp("torchrun"), {"task": "supervised", "model": "mlp",
                                                                 "use_slurm": False}, digits=False)


def make(experiment: Experiment, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    pythonpath = f"PYTHONPATH={experiment.env['PYTHONPATH']}"   # the Makefile sets src/; keep this checkout
    return subprocess.run(["make", *args, f"PY={sys.executable}", pythonpath], cwd=experiment.path,
                          env=experiment.env, capture_output=True, text=True, timeout=timeout)


def test_make_train_nproc_picks_torchrun(experiment):
    plain = make(experiment, "-n", "train").stdout
    assert f"{sys.executable} -m my_experiment.train" in plain and "torch.distributed" not in plain
    two = make(experiment, "-n", "train", "NPROC=2", "ARGS=--training.epochs 1").stdout
    assert (f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2 -m my_experiment.train "
            f"--training.epochs 1") in two


@pytest.mark.slow
def test_make_train_nproc_2_trains_the_generated_experiment(experiment):
    """The real path: .beton files, FFCV loaders sharded over 2 gloo ranks, one epoch."""
    assert make(experiment, "data", timeout=300).returncode == 0
    started = time.monotonic()
    done = make(experiment, "train", "NPROC=2",
                "ARGS=--training.epochs 1 --logging.progress false --logging.run_id two", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"make train NPROC=2, 1 epoch: {time.monotonic() - started:.1f} s")
    assert done.stdout.count("final validation top-1 accuracy:") == 1          # rank 0 prints the summary
    run = experiment.path / "runs" / "two"
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2
    epochs = [r for r in read_log(run) if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [0] and epochs[0]["val_top1"] > 0.3   # 10 classes: chance is 0.1
    steps = [r["step"] for r in read_log(run) if r.get("kind") == "train_step"]
    assert steps == sorted(set(steps)) and (run / "checkpoints" / "last.pt").exists()
