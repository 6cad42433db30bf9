"""The metric-learning template's graph hook (config section `graph`, off by default): a generated experiment
run as a user runs it (`python -m my_experiment.train`) on real digits .beton files learns a graph over its
probe batch after the epoch, logs the graph's statistics, and adds the graph Laplacian loss to train_step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator.cli import new_experiment
from generator.template_repo import build_template_repo, tag
from torchstrap_runtime.data import write_digits
from torchstrap_runtime.loggers import read_log

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # generates an experiment and trains it three times: about a minute unloaded


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("graphs_template")
    template = build_template_repo(root / "tpl")
    tag(template, "v1.0.0")
    exp = new_experiment(root / "exp", {"task": "metric-learning", "use_slurm": False}, template=str(template))
    digits = write_digits(root / "digits")
    env = {**os.environ, "PYTHONPATH": f"{exp / 'src'}{os.pathsep}{REPO}",
           "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))}
    env.pop("TORCHSTRAP_DEBUG", None)
    return {"exp": exp, "root": root, "train": str(digits["train"]), "val": str(digits["val"]), "env": env}


def train(experiment: dict, run_id: str, *args: str) -> list[dict]:
    """Two short epochs of the generated experiment; the epoch records of its log."""
    argv = [sys.executable, "-m", "my_experiment.train", "-C", "configs/default.yaml", "--data.train_path",
            experiment["train"], "--data.val_path", experiment["val"], "--training.epochs", "2",
            "--training.limit_train_batches", "4", "--training.limit_val_batches", "1", "--logging.progress",
            "false", "--logging.folder", str(experiment["root"] / "runs"), "--logging.run_id", run_id, *args]
    result = subprocess.run(argv, cwd=experiment["exp"], env=experiment["env"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [r for r in read_log(experiment["root"] / "runs" / run_id) if r.get("kind") == "epoch"]


def test_graph_hook_logs_the_graph_and_feeds_the_loss(experiment):
    config = (experiment["exp"] / "configs" / "default.yaml").read_text()
    assert "graph:" in config and "learn: false" in config and "loss_weight: 0.0" in config
    off = train(experiment, "off")
    assert len(off) == 2 and not any(key.startswith("graph_") for r in off for key in r)  # off by default
    on = train(experiment, "on", "--graph.learn", "true", "--graph.loss_weight", "0.1")
    assert len(on) == 2
    for record in on:  # the probe is the first batch: data.batch_size = 64 nodes
        assert record["graph_nodes"] == 64 and record["graph_edges"] > 0 and record["graph_avg_degree"] > 0
    assert "graph_edge_f_vs_previous" in on[1]  # warm-started from epoch 1's graph
    # epoch 1 trains before any graph exists (the same loss as off); epoch 2 adds 0.1 * the graph loss
    assert on[0]["train_loss"] == pytest.approx(off[0]["train_loss"], rel=1e-5)
    assert on[1]["train_loss"] != pytest.approx(off[1]["train_loss"], rel=1e-4)


def test_graph_loss_without_learning_is_one_sentence(experiment):
    argv = [sys.executable, "-m", "my_experiment.train", "-C", "configs/default.yaml", "--data.train_path",
            experiment["train"], "--data.val_path", experiment["val"], "--graph.loss_weight", "0.1",
            "--logging.folder", str(experiment["root"] / "runs"), "--logging.run_id", "bad"]
    result = subprocess.run(argv, cwd=experiment["exp"], env=experiment["env"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "graph.loss_weight 0.1 needs graph.learn true" in result.stderr
