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
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from torchstrap_runtime import launcher
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.mirrors import MirrorError, Mirrors, scalars
from torchstrap_runtime.trainer import MEASURED_KEYS

import test_cluster_toy as toy
from test_runs import toy_config as runs_toy_config

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
BACKENDS = ["tensorboard", "csv", "mlflow", "wandb"]
# the runs behind these tests start two processes that import torch, TensorBoard, MLflow and W&B: over a minute
SLOW = pytest.mark.slow


def toy_config(folder: Path, run_id: str, backends: list[str]) -> dict:
    return runs_toy_config(folder, run_id, logging={"backends": backends})


def env() -> dict:
    """The jobs' environment: offline W&B, each job its own W&B service (as separate SLURM jobs have; the
    pytest process's service, named in WANDB_SERVICE, would keep the killed job's run open)."""
    variables = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return dict(variables, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), WANDB_MODE="offline",
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
    previous = {key: os.environ.get(key) for key in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    try:
        assert launcher.run_training(toy_config(straight, "run", BACKENDS), toy.TRAINER)["finished"]
    finally:
        for key, value in previous.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
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


@SLOW
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
        if tag.split("/")[-1] not in MEASURED_KEYS:   # clock readings differ between two runs
            assert tensorboard_scalars(resumed)[tag] == values, tag


@SLOW
def test_tensorboard_histograms_of_log_hdf5(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run_dir in runs:
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0}).Reload()
        assert "val_confusion" in events.Tags()["histograms"]
        steps = [e.step for e in events.Histograms("val_confusion")]
        epochs = [r["step"] for r in read_log(run_dir) if r.get("kind") == "epoch"]
        assert steps == epochs


@SLOW
def test_csv_rebuilt_on_resume(runs):
    straight, resumed = runs
    def rows(run_dir, kind):
        with open(run_dir / "csv" / f"{kind}.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k not in MEASURED_KEYS} for r in csv.DictReader(f)]
    for kind in ("epoch", "train_step"):
        assert rows(resumed, kind) == rows(straight, kind) and rows(straight, kind)
    log_epochs = [r for r in read_log(straight) if r.get("kind") == "epoch"]
    assert [float(r["val_top1"]) for r in rows(straight, "epoch")] == [r["val_top1"] for r in log_epochs]


@SLOW
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


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline `.wandb` file (W&B's LevelDB-log format: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunk, records = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left   # block trailer
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # a FULL record, or the LAST piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(path: Path) -> tuple[str | None, list[dict]]:
    records = wandb_records(path)
    run_id = next((r.run.run_id for r in records if r.WhichOneof("record_type") == "run"), None)
    rows = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return run_id, rows


@SLOW
def test_wandb_offline_continues_the_same_run(runs):
    straight, resumed = runs
    want = {step: value for step, value in expected_scalars(straight)["epoch/val_top1"]}
    (file,) = sorted(straight.glob("wandb/offline-run-*/run-*.wandb"))
    run_id, rows = wandb_history(file)
    assert run_id == json.loads((straight / "config.json").read_text())["mirrors"]["wandb_id"]
    assert {r["_step"]: r["epoch/val_top1"] for r in rows if "epoch/val_top1" in r} == want
    assert [r["_step"] for r in rows if "train_step/train_loss" in r] == \
        [s for s, _ in expected_scalars(straight)["train_step/train_loss"]]
    files = sorted(resumed.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2   # the killed process and the resumed one, under one W&B run id
    killed, again = [wandb_history(f) for f in files]
    wandb_id = json.loads((resumed / "config.json").read_text())["mirrors"]["wandb_id"]
    assert again[0] == wandb_id and killed[0] in (wandb_id, None)   # None: SIGKILL left W&B's header only
    first_epoch_end = min(want)   # the checkpoint the resumed process starts from
    assert min(r["_step"] for r in again[1]) >= first_epoch_end   # it logs from its checkpoint on
    merged = {}
    for _, rows in (killed, again):   # what `wandb sync` makes of them
        merged.update({r["_step"]: r["epoch/val_top1"] for r in rows if "epoch/val_top1" in r})
    assert merged == {step: value for step, value in want.items() if step in merged} and max(want) in merged


def test_tensorboard_and_csv_resume_in_process(tmp_path):
    """The resume path without a Trainer: lines after the checkpoint are purged (TensorBoard) or rebuilt (CSV),
    lines at the checkpoint's step that the checkpoint kept are written again, new lines win."""
    from torchstrap_runtime.loggers import JSONLogger

    run = tmp_path / "run"
    run.mkdir()
    logger, mirrors = JSONLogger(run / "log.jsonl"), Mirrors(run, ["tensorboard", "csv"])
    for step in range(6):
        mirrors.log(logger.log({"kind": "train_step", "train_loss": float(step)}, epoch=0, step=step))
    mirrors.log(logger.log({"kind": "epoch", "val_top1": 0.5}, epoch=0, step=6))
    checkpoint_bytes = logger.tell()   # the checkpoint: step 6, after the epoch line
    for step in range(6, 9):           # logged, then the process is killed
        mirrors.log(logger.log({"kind": "train_step", "train_loss": -1.0}, epoch=1, step=step))
    mirrors.close()
    logger.close()
    with open(run / "log.jsonl", "r+b") as f:   # what the resumed Trainer does to log.jsonl
        f.truncate(checkpoint_bytes)
    logger, mirrors = JSONLogger(run / "log.jsonl"), Mirrors(run, ["tensorboard", "csv"], resume_step=6)
    for step in range(6, 10):
        mirrors.log(logger.log({"kind": "train_step", "train_loss": float(step)}, epoch=1, step=step))
    mirrors.close(finished=True)
    logger.close()
    got = tensorboard_scalars(run)
    assert got["train_step/train_loss"] == [(step, float(step)) for step in range(10)]
    assert got["epoch/val_top1"] == [(6, 0.5)]
    with open(run / "csv" / "train_step.csv", newline="") as f:
        assert [float(r["train_loss"]) for r in csv.DictReader(f)] == [float(step) for step in range(10)]
