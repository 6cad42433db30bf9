"""Exact resume: a run stopped at any step (USR2 -> checkpoint -> new process/Trainer) ends bitwise equal.

In-process tests drive the real signal path (`launcher.run_training` catches USR2 and asks the Trainer to
stop); subprocess tests kill -9 runs (also during checkpoint writes) and run the same command again.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from torchstrap_runtime import config as cfg
from torchstrap_runtime import launcher
from torchstrap_runtime.checkpoint import load_torch

import test_cluster_toy as toy

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 1400 // 64   # 21
EPOCHS = 3


TOY_SECTIONS = ("training", "model", "optimizer", "scheduler", "criterion", "logging", "toy", "slurm")


def declared_by_a_toy_job() -> dict[str, set[str]]:
    """The keys of the runtime's standard sections as a fresh toy job process declares them (modules other tests
    import add keys to them, e.g. torchstrap_runtime.recipes.ffcv's model.use_blurpool)."""
    from fastargs.state import set_current_config

    from torchstrap_runtime.sections import declare_standard_sections

    previous = cfg.get_config()
    cfg.reset_config()
    declare_standard_sections()
    keys = {name: set(values) for name, values in cfg.config_as_dict().items()}
    set_current_config(previous)
    return keys


@contextlib.contextmanager
def declared_as_in_a_toy_job() -> Iterator[None]:
    """Inside: the global config declares only what a toy job process declares (see declared_by_a_toy_job), so a
    config built from it (launcher.main) is one the job's process knows every key of."""
    from fastargs.state import set_current_config

    previous, standard = cfg.get_config(), declared_by_a_toy_job()
    narrowed = cfg.Config()
    narrowed.sections = dict(previous.sections)
    narrowed.entries = {path: entry for path, entry in previous.entries.items() if path[0] in TOY_SECTIONS
                        and (path[0] not in standard or ".".join(path[1:]) in standard[path[0]])}
    set_current_config(narrowed)
    try:
        yield
    finally:
        set_current_config(previous)


def toy_config(folder: Path, run_id: str, **overrides: dict) -> dict:
    """The resolved config of a small toy run (3 epochs x 21 steps, cosine schedule, dropout, noise)."""
    standard = declared_by_a_toy_job()
    cfg.load_config([])
    base = {name: {key: value for key, value in values.items() if name not in standard or key in standard[name]}
            for name, values in cfg.config_as_dict().items() if name in TOY_SECTIONS}
    base["training"].update(epochs=EPOCHS, seed=3, device="cpu")   # also on GPU machines (jobs see no GPU)
    base["scheduler"].update(name="cosine", warmup_epochs=0.5)
    base["logging"].update(folder=str(folder), run_id=run_id, progress=False, log_every=1)
    for section, values in overrides.items():
        base[section].update(values)
    return base


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run."""
    folder = tmp_path_factory.mktemp("ref")
    result = launcher.run_training(toy_config(folder, "ref"), toy.TRAINER)
    assert result["finished"] and result["step"] == EPOCHS * STEPS_PER_EPOCH
    return folder / "ref"


def run_until_finished(config: dict, max_runs: int = 10) -> list[dict]:
    """Run the job again and again (as a requeue would) until it finishes; returns each run's result."""
    results = []
    for _ in range(max_runs):
        results.append(launcher.run_training(config, toy.TRAINER))
        if results[-1]["finished"]:
            return results
    raise AssertionError(f"not finished after {max_runs} runs: {results}")


# steps: first, mid-epoch, last of epoch 0, first of epoch 1, last of the run
@pytest.mark.parametrize("stops", [[0], [9], [STEPS_PER_EPOCH - 1], [STEPS_PER_EPOCH], [EPOCHS * STEPS_PER_EPOCH - 1],
                                   [4, 5, 30, 50]])
def test_usr2_at_any_step_resumes_exactly(tmp_path, reference, stops):
    config = toy_config(tmp_path, "run", toy={"signal_at_steps": stops})
    results = run_until_finished(config)
    assert len(results) == len(stops) + 1
    assert [r["step"] for r in results[:-1]] == [s + 1 for s in stops]   # stopped right after the signalled step
    toy.assert_same_run(reference, tmp_path / "run")


def test_periodic_checkpoints_and_amp_scaler_state(tmp_path, reference):
    """Periodic checkpoints do not change the result; the checkpoint holds every piece of state."""
    config = toy_config(tmp_path, "run", logging={"checkpoint_every": 5}, toy={"signal_at_steps": [12]})
    run_until_finished(config)
    toy.assert_same_run(reference, tmp_path / "run")
    state = load_torch(tmp_path / "run" / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "batch", "rng", "criterion"):
        assert key in state, key
    assert state["epoch"] == EPOCHS and state["step"] == EPOCHS * STEPS_PER_EPOCH


def test_signal_during_construction_requeues_without_training(tmp_path):
    """USR2 before the loop starts: nothing trained, not finished (the job requeues), the next run trains."""
    config = toy_config(tmp_path, "run", training={"epochs": 1})
    job = launcher.TrainJob(config, toy.TRAINER)

    class Early(toy.ToyTrainer):
        def initialize_logger(self) -> None:
            super().initialize_logger()
            os.kill(os.getpid(), signal.SIGUSR2)

    toy.Early = Early
    result = launcher.run_training(config, "test_cluster_toy:Early", job)
    assert not result["finished"] and result["step"] == 0
    assert launcher.run_training(config, toy.TRAINER)["finished"]


def _command(folder: Path, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torchstrap_runtime.launcher", "run", toy.TRAINER, "--training.device", "cpu",
            "--training.epochs", str(EPOCHS), "--training.seed", "3", "--scheduler.name", "cosine",
            "--scheduler.warmup_epochs", "0.5", "--logging.folder", str(folder), "--logging.run_id", run_id,
            "--logging.progress", "false", "--logging.log_every", "1", *extra]


def _env() -> dict:
    path = [str(ROOT / "tests"), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    return env


def test_kill9_then_same_command_resumes_exactly(tmp_path, reference):
    """A workstation run killed with SIGKILL continues from its periodic checkpoint when run again."""
    cmd = _command(tmp_path, "run", "--logging.checkpoint_every", "4", "--toy.kill_at_step", "30")
    first = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert load_torch(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 28   # last multiple of 4
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stderr
    toy.assert_same_run(reference, tmp_path / "run")


_WRITER = """
import sys, torch
from pathlib import Path
from typing import Iterator
from torchstrap_runtime.checkpoint import save_torch_atomic
path = Path(sys.argv[1])
big = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))
i = 0
while True:
    i += 1
    save_torch_atomic({"i": i, "data": big, "stamp": torch.full((1000,), i)}, path)
    print(i, flush=True)
"""


def test_kill9_during_checkpoint_writes_never_leaves_a_broken_checkpoint(tmp_path):
    """SIGKILL a process that writes 16 MB checkpoints back to back, at random moments: last.pt always loads."""
    path = tmp_path / "checkpoints" / "last.pt"
    rng = random.Random(0)
    expected = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=_env(), stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline()            # at least one checkpoint written in this attempt
        time.sleep(rng.uniform(0.05, 0.6))
        proc.kill()
        proc.wait()
        state = load_torch(path)
        assert state["i"] >= 1 and torch.equal(state["stamp"], torch.full((1000,), state["i"]))
        assert torch.equal(state["data"], expected)
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "last.pt"]
    assert all(name.endswith(".tmp") for name in leftovers), leftovers
    # a half-written temp file left behind proves some kill landed inside a write (it is ~90% of the loop)
    assert leftovers, "no kill landed inside a checkpoint write"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_amp_resume_is_exact(tmp_path, dtype, monkeypatch):
    """On CUDA with AMP (GradScaler for float16), USR2 mid-epoch then resume ends bitwise equal."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        over = dict(training={"dtype": dtype, "device": "cuda"})
        ref = launcher.run_training(toy_config(tmp_path, "ref", **over), toy.TRAINER)
        assert ref["finished"]
        run_until_finished(toy_config(tmp_path, "cut", **over, toy={"signal_at_steps": [9, 30]}))
        toy.assert_same_run(tmp_path / "ref", tmp_path / "cut")
        scaler = load_torch(tmp_path / "cut" / "checkpoints" / "last.pt")["scaler"]
        assert bool(scaler) == (dtype == "float16")   # the scaler's scale and growth tracker were saved
    finally:
        torch.use_deterministic_algorithms(False)


def test_accumulation_ema_and_best_checkpoints_resume_exactly(tmp_path):
    """accumulate 2 + EMA + best/top-k tracking: stopped mid-accumulation (step 12 stops after 13), at an
    accumulation boundary (step 30) and in the last epoch, the run ends bitwise equal to an uninterrupted one."""
    over = dict(training={"accumulate": 2, "ema_decay": 0.9},
                logging={"monitor": "val_top1", "save_top_k": 2, "checkpoint_every": 6})
    assert launcher.run_training(toy_config(tmp_path, "ref", **over), toy.TRAINER)["finished"]
    results = run_until_finished(toy_config(tmp_path, "cut", **over, toy={"signal_at_steps": [12, 30, 50]}))
    assert [r["step"] for r in results[:-1]] == [14, 31, 52]  # each stop waits for the end of its accumulation
    toy.assert_same_run(tmp_path / "ref", tmp_path / "cut")
    ref, cut = (load_torch(tmp_path / run / "checkpoints" / "last.pt") for run in ("ref", "cut"))
    assert ref["best"] == cut["best"] and len(ref["best"]) == 2
    for key in ref["ema"]:
        assert torch.equal(ref["ema"][key], cut["ema"][key]), key
    names = sorted(p.name for p in (tmp_path / "ref" / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) and "best.pt" in names
    best_ref, best_cut = (load_torch(tmp_path / run / "checkpoints" / "best.pt") for run in ("ref", "cut"))
    for key in best_ref["model"]:
        assert torch.equal(best_ref["model"][key], best_cut["model"][key]), key
