"""The workload of the cluster and resume tests: a small Trainer on sklearn's digits with a seeded loader.

No tests here. Jobs import it by path (`test_cluster_toy:ToyTrainer`, with `tests/` on PYTHONPATH).
The loader replays any epoch from any batch (`set_epoch(epoch, start_batch)`), adds seeded per-sample
noise (an augmentation), and gives rank r the r-th contiguous slice of every global batch, so a 2-process
run sees exactly the batches of a 1-process run. The model has BatchNorm and Dropout (RNG on resume).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchstrap_runtime.config import Float, Int, ListOfInt, Param, Section, get_config
from torchstrap_runtime.trainer import MEASURED_KEYS, Trainer

TESTS = Path(__file__).resolve().parent
TRAINER = "test_cluster_toy:ToyTrainer"


def _declared() -> bool:
    try:
        get_config()["toy.batch_size"]
        return True
    except Exception:
        return False


def declare_toy_section() -> None:
    """Declare the `toy` section unless it is (again after `reset_config()`)."""
    if _declared():
        return
    Section("toy", "test workload").params(
        batch_size=Param(Int(), "global batch size (split across ranks)", default=64),
        dropout=Param(Float(), "dropout probability (0 for DDP comparisons)", default=0.2),
        noise=Param(Float(), "std of the seeded per-sample noise added to the inputs", default=0.1),
        step_sleep=Param(Float(), "seconds to sleep after each step (slow jobs for signal tests)", default=0.0),
        signal_at_steps=Param(ListOfInt(), "send ourselves USR2 after these global steps", default=[]),
        kill_at_step=Param(Int(), "SIGKILL ourselves after this step on a fresh run (-1 = never)", default=-1),
    )


declare_toy_section()


def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


class SeededLoader:
    """In-memory loader: seeded order per epoch, seeded noise per (epoch, sample), resumable, sharded."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, train: bool,
                 noise: float = 0.0, rank: int = 0, world_size: int = 1) -> None:
        assert batch_size % world_size == 0, "the global batch must split evenly across ranks"
        self.x, self.y, self.batch_size, self.seed, self.train = x, y, batch_size, seed, train
        self.noise, self.rank, self.world_size = noise, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        noise = torch.randn(n, self.x.shape[1], generator=g) * self.noise if self.noise else None
        per_rank = self.batch_size // self.world_size
        for b in range(self.start_batch, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            idx = idx[self.rank * per_rank:(self.rank + 1) * per_rank] if self.train else idx[self.rank::self.world_size]
            x = self.x[idx] + noise[idx] if noise is not None and self.train else self.x[idx]
            yield x, self.y[idx]
        self.start_batch = 0


class ToyTrainer(Trainer):
    """MLP with BatchNorm and Dropout on 8x8 digits; hooks to slow down, signal or kill itself."""

    def initialize_model(self) -> None:
        # bitwise comparisons across processes need one torch thread count everywhere (importing FFCV sets 1)
        torch.set_num_threads(1)
        p = get_config()["toy.dropout"]
        self.model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(p), nn.Linear(64, 10))

    def _split(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        x, y = digits_arrays()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
        tr, va = order[:1400], order[1400:]
        return (x[tr], y[tr]), (x[va], y[va])

    def initialize_train_loader(self) -> None:
        (x, y), _ = self._split()
        c = get_config()
        self.train_loader = SeededLoader(x, y, c["toy.batch_size"], seed=7, train=True, noise=c["toy.noise"],
                                         rank=self.rank, world_size=self.world_size)

    def initialize_val_loader(self) -> None:
        _, (x, y) = self._split()
        self.val_loader = SeededLoader(x, y, 128, seed=7, train=False, rank=self.rank, world_size=self.world_size)

    def load_checkpoint(self) -> None:
        self.fresh_run = not self.checkpoint_path.exists()
        super().load_checkpoint()

    def after_train_step(self) -> None:
        super().after_train_step()
        c = get_config()
        if c["toy.step_sleep"]:
            time.sleep(c["toy.step_sleep"])
        if self.step in c["toy.signal_at_steps"]:
            os.kill(os.getpid(), signal.SIGUSR2)
        if self.fresh_run and self.step == c["toy.kill_at_step"]:
            os.kill(os.getpid(), signal.SIGKILL)


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights and buffers of a run's last checkpoint."""
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def log_rows(run_dir: Path) -> list[dict]:
    """The run's log.jsonl rows without wall-clock fields (nor the closing `end` line)."""
    import json

    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in MEASURED_KEYS} for row in rows if row.get("kind") != "end"]


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise-equal final weights and identical log rows."""
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs between {a} and {b}"
    ra, rb = log_rows(a), log_rows(b)
    assert ra == rb, f"logs differ:\n{ra}\n{rb}"
    assert np.isfinite([r.get("train_loss", 0.0) for r in ra]).all()
