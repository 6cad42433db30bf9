"""An audit of the Trainer's claims: tests that fail when the claim is broken (each was checked by
breaking the code once). AMP really computes in the chosen dtype, `load_from` restores optimizer and scheduler
state, `eval_only` reproduces the trained run's figures, and a killed writer leaves only correct rows."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from torchstrap_runtime.config import set_values
from torchstrap_runtime.loggers import read_log

from test_trainer import TinyTrainer, config  # noqa: F401  (its autouse config fixture applies here too)

ROOT = Path(__file__).resolve().parents[1]


class DtypeRecordingMLP(torch.nn.Module):
    """TinyTrainer's MLP; every forward records the dtype its first layer computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16))
        self.rest = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(16, 2))
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        self.seen.append((self.training, hidden.dtype))
        return self.rest(hidden)


class DtypeTrainer(TinyTrainer):
    def initialize_model(self) -> None:
        self.model = DtypeRecordingMLP()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_amp_computes_in_the_chosen_dtype_and_scales_only_float16_on_cuda(dtype):
    if dtype == "float16" and not torch.cuda.is_available():
        pytest.skip("float16 needs CUDA: refused on the CPU (tests/test_faults.py::test_float16_on_the_cpu)")
    set_values({"training.dtype": dtype, "training.epochs": 1})
    trainer = DtypeTrainer()
    trainer.run()
    seen = trainer.raw_model.seen
    assert {training for training, _ in seen} == {True, False}, "both train and eval steps ran"
    assert {d for _, d in seen} == {getattr(torch, dtype)}, f"forward must compute in {dtype} in train and eval"
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters()), "master weights stay float32"
    scaled = dtype == "float16" and trainer.device.type == "cuda"
    assert trainer.scaler.is_enabled() == scaled, f"GradScaler on {trainer.device.type}/{dtype}"
    assert bool(trainer.state_dict()["scaler"]) == scaled, "the checkpoint holds the scaler state when it scales"


def test_load_from_restores_optimizer_momentum_and_scheduler_state(tmp_path):
    set_values({"logging.run_id": "source", "optimizer.name": "sgd", "optimizer.momentum": 0.9,
                "scheduler.name": "cosine"})
    source = TinyTrainer()
    source.run()
    set_values({"logging.run_id": "loaded", "model.load_from": str(source.checkpoint_path),
                "model.load_optimizer": True, "model.load_scheduler": True})
    loaded = TinyTrainer()
    want, got = source.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert want["state"] and sorted(want["state"]) == sorted(got["state"])
    for index, state in want["state"].items():
        assert state["momentum_buffer"].abs().sum() > 0
        assert torch.equal(state["momentum_buffer"], got["state"][index]["momentum_buffer"])
    assert loaded.scheduler.state_dict() == source.scheduler.state_dict()
    assert loaded.optimizer.param_groups[0]["lr"] == source.optimizer.param_groups[0]["lr"]

    set_values({"logging.run_id": "model_only", "model.load_optimizer": False, "model.load_scheduler": False})
    model_only = TinyTrainer()
    assert model_only.optimizer.state_dict()["state"] == {}, "without load_optimizer: fresh momentum"
    assert model_only.scheduler.state_dict() != source.scheduler.state_dict()


def test_eval_only_with_load_from_reproduces_the_last_validation_figures(tmp_path):
    set_values({"logging.run_id": "trained"})
    trained = TinyTrainer()
    trained.run()
    last = [r for r in read_log(trained.run_dir) if r.get("kind") == "epoch"][-1]
    set_values({"logging.run_id": "evaluated", "training.eval_only": True,
                "model.load_from": str(trained.checkpoint_path)})
    record = TinyTrainer().run()
    for key in ("val_loss", "val_top1", "val_top5"):
        assert record[key] == last[key], key


WRITER = textwrap.dedent("""
    import sys, torch
    from torchstrap_runtime.loggers import JSONLogger, HDF5Logger
    folder, text = sys.argv[1], "x" * int(sys.argv[2])
    json_log, h5_log = JSONLogger(folder + "/log.jsonl"), HDF5Logger(folder + "/arrays.h5")
    for step in range(10**9):
        json_log.log({"loss": 1.0 / (step + 1), "text": text}, step=step)
        h5_log.log({"a": torch.full((8, 8), float(step))}, step=step)
        if step == 3:
            print("ready", flush=True)
""")
LINE = 65536  # characters of text per JSON line
KILLS = 6


def kill_at_random(folder: Path, rng: random.Random) -> None:
    folder.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(LINE)], stdout=subprocess.PIPE,
                               text=True, env=env)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(rng.uniform(0.0, 0.4))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def check_rows(folder: Path) -> bool:
    """Every surviving JSON row carries its step's values, every HDF5 row matches its step's JSON row;
    returns whether the file ended in a torn (partial) line."""
    raw = (folder / "log.jsonl").read_bytes()
    torn = not raw.endswith(b"\n")
    rows = read_log(folder)
    assert len(rows) == raw.count(b"\n") >= 4, "every complete line is read back"
    assert [r["step"] for r in rows] == list(range(len(rows)))
    for row in rows:
        assert row["loss"] == 1.0 / (row["step"] + 1) and row["text"] == "x" * LINE
    values, steps = np.zeros((0, 8, 8)), np.zeros(0, dtype=int)
    if (folder / "arrays.h5").exists():  # absent when killed before the writer thread opened it
        with h5py.File(folder / "arrays.h5", "r") as f:  # must open: never a half-created file
            if "a" in f:
                values, steps = f["a"][:], f["a__step"][:]
    assert len(values) == len(steps) and list(steps) == list(range(len(steps)))
    by_step = {r["step"]: r for r in rows}
    for value, step in zip(values, steps):
        assert np.all(value == float(step))
        if step == len(rows) and torn:
            continue  # the torn line was this step's JSON row
        assert step in by_step and by_step[step]["loss"] == 1.0 / (step + 1), "HDF5 rows follow their JSON row"
    return torn


def test_killed_writer_leaves_only_correct_rows(tmp_path):
    """SIGKILL at random moments, again and again. Each JSON line is one write() call, which SIGKILL on Linux
    does not split, so a torn last line may never appear on its own: after the kills, the last run's file
    is cut inside its last line (what a power loss or a full disk leaves) and read again."""
    rng = random.Random(16)
    torn_seen = 0
    for attempt in range(KILLS):
        kill_at_random(tmp_path / f"kill{attempt}", rng)
        torn_seen += check_rows(tmp_path / f"kill{attempt}")
    log = tmp_path / f"kill{KILLS - 1}" / "log.jsonl"
    raw = log.read_bytes()
    start = raw.rstrip(b"\n").rfind(b"\n") + 1
    log.write_bytes(raw[:start + rng.randrange(1, len(raw) - start - 1)])
    assert check_rows(log.parent), "the cut file ends in a torn line"
    print(f"torn last lines from SIGKILL alone: {torn_seen} of {KILLS}")
