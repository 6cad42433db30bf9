"""`logging.backends`: TensorBoard, CSV, MLflow (file store) and W&B (offline) mirrors of the log, read back.

A run killed with SIGKILL after its epoch-0 checkpoint is run again: every backend must then hold exactly the
steps and values of an uninterrupted run (TensorBoard purges from the resumed step, MLflow skips the steps it
has, CSV is rebuilt), and the resumed run continues the same MLflow/W&B run (ids kept in config.json).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from torchstrap_runtime import config as cfg
from torchstrap_runtime import launcher
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.mirrors import MirrorError, Mirrors, scalars

import test_cluster_toy as toy

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
BACKENDS = ["tensorboard", "csv", "mlflow"]


def toy_config(folder: Path, run_id: str, backends: list[str]) -> dict:
    cfg.load_config([])
    base = cfg.config_as_dict()
    base["training"].update(epochs=EPOCHS, seed=0, device="cpu")
    base["logging"].update(folder=str(folder), run_id=run_id, progress=False, log_every=5, backends=backends)
    return base


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), WANDB_MODE="offline",
                WANDB_SILENT="true")


def command(folder: Path, run_id: str, backends: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "torchstrap_runtime.launcher", "run", toy.TRAINER, "--training.device", "cpu",
            "--training.epochs", str(EPOCHS), "--training.seed", "0", "--logging.folder", str(folder),
            "--logging.run_id", run_id, "--logging.progress", "false", "--logging.log_every", "5",
            "--logging.backends", ",".join(backends), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(straight run, killed-then-resumed run), both mirrored to BACKENDS."""
    straight = tmp_path_factory.mktemp("straight")
    assert launcher.run_training(toy_config(straight, "run", BACKENDS), toy.TRAINER)["finished"]
    resumed = tmp_path_factory.mktemp("resumed")
    killed = subprocess.run(command(resumed, "run", BACKENDS, "--toy.kill_at_step", "30"), env=env(),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    again = subprocess.run(command(resumed, "run", BACKENDS), env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-3000:]
    return straight / "run", resumed / "run"


def expected_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from log.jsonl, the record the mirrors copy."""
    out: dict[str, list[tuple[int, float]]] = {}
    for record in read_log(run_dir):
        if record.get("kind") != "end":
            for tag, value in scalars(record).items():
                out.setdefault(tag, []).append((record["step"], value))
    return out


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_the_log_without_duplicated_steps(runs):
    straight, resumed = runs
    for run_dir in runs:
        got, want = tensorboard_scalars(run_dir), expected_scalars(run_dir)
        assert set(got) == set(want) and {"epoch/val_top1", "train_step/train_loss"} <= set(got)
        for tag in want:
            assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
            assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag
    # the resumed run: same steps and (exact resume) same values as the straight one
    assert tensorboard_scalars(resumed).keys() == tensorboard_scalars(straight).keys()
    for tag, values in tensorboard_scalars(straight).items():
        assert tensorboard_scalars(resumed)[tag] == values, tag


def test_tensorboard_histograms_of_log_hdf5(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run_dir in runs:
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0}).Reload()
        assert "val_confusion" in events.Tags()["histograms"]
        steps = [e.step for e in events.Histograms("val_confusion")]
        epochs = [r["step"] for r in read_log(run_dir) if r.get("kind") == "epoch"]
        assert steps == epochs


def test_csv_rebuilt_on_resume(runs):
    straight, resumed = runs
    def rows(run_dir, kind):
        with open(run_dir / "csv" / f"{kind}.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(f)]
    for kind in ("epoch", "train_step"):
        assert rows(resumed, kind) == rows(straight, kind) and rows(straight, kind)
    log_epochs = [r for r in read_log(straight) if r.get("kind") == "epoch"]
    assert [float(r["val_top1"]) for r in rows(straight, "epoch")] == [r["val_top1"] for r in log_epochs]


def test_mlflow_continues_the_same_run_without_duplicates(runs):
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    for run_dir in runs:
        run_id = json.loads((run_dir / "config.json").read_text())["mirrors"]["mlflow_run_id"]
        client = MlflowClient(tracking_uri=(run_dir.parent / "mlruns").resolve().as_uri())
        assert len(client.search_runs([client.get_experiment_by_name("torchstrap").experiment_id])) == 1
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["optimizer.lr"] == "0.1"
        for tag, want in expected_scalars(run_dir).items():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag))
            assert [s for s, _ in history] == [s for s, _ in want], tag
            assert [v for _, v in history] == pytest.approx([v for _, v in want]), tag


def test_missing_package_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)   # as if not installed
    with pytest.raises(MirrorError, match=r"^logging.backends has wandb, which needs the package wandb: pip install wandb"):
        Mirrors(tmp_path, ["wandb"])
