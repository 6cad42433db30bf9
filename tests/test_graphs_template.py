"""The metric-learning template's graph hook (config section `graph`, off by default): a generated experiment
run as a user runs it (`python -m my_experiment.train`) on real digits .beton files learns a graph over its
probe batch after the epoch, logs the graph's statistics, and adds the graph Laplacian loss to train_step."""

from __future__ import annotations

import pytest

from experiments import Experiment, make_experiment
from torchstrap_runtime.loggers import read_log

pytestmark = pytest.mark.slow  # generates an experiment and trains it three times: about a minute unloaded


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    return make_experiment(tmp_path_factory.mktemp("graphs_template"), {"task": "metric-learning", "use_slurm": False})


def train(experiment: Experiment, run_id: str, *args: str) -> list[dict]:
    """Two short epochs of the generated experiment; the epoch records of its log."""
    result = experiment.run_train("--training.epochs", "2", "--training.limit_train_batches", "4",
                              "--training.limit_val_batches", "1", "--logging.run_id", run_id, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return [r for r in read_log(experiment.root / "runs" / run_id) if r.get("kind") == "epoch"]


def test_graph_hook_logs_the_graph_and_feeds_the_loss(experiment):
    graph = experiment.config()["graph"]
    assert graph["learn"] is False and graph["loss_weight"] == 0.0
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
    result = experiment.run_train("--graph.loss_weight", "0.1", "--logging.run_id", "bad")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "graph.loss_weight 0.1 needs graph.learn true" in result.stderr
