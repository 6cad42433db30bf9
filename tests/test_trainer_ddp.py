"""Gradient accumulation under DDP (2 CPU processes, gloo): the inner batches of an accumulation run under
`no_sync()` (one gradient all-reduce per optimizer step, counted by a DDP communication hook), and the result
matches one process with the same global batches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from torchstrap_runtime import launcher

import test_cluster_toy as toy
from test_resume import ROOT, STEPS_PER_EPOCH, toy_config


class CountingTrainer(toy.ToyTrainer):
    """Counts the gradient all-reduces DDP launches (one per bucket; the toy model fits one bucket)."""

    def prepare_model(self) -> None:
        super().prepare_model()
        self.allreduces = 0
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting(state, bucket):
                self.allreduces += 1
                return allreduce_hook(None, bucket)

            self.model.register_comm_hook(None, counting)

    def after_train_epoch(self) -> None:
        super().after_train_epoch()
        self.epoch_record["allreduces"] = self.allreduces


@pytest.fixture(autouse=True)
def job_env(monkeypatch):
    """Job processes find this module through the job's recorded sys.path (as in test_cluster_local)."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache")))


def test_accumulation_under_ddp_syncs_once_per_optimizer_step(tmp_path):
    over = dict(training={"epochs": 1, "accumulate": 2}, toy={"dropout": 0.0}, optimizer={"lr": 0.05})
    one = toy_config(tmp_path / "runs", "one", **over)
    assert launcher.run_training(one, "test_trainer_ddp:CountingTrainer")["finished"]
    two = toy_config(tmp_path / "runs", "two", **over)
    two["slurm"].update(folder=str(tmp_path / "submitit" / "%j"), timeout_min=30, signal_delay_s=5, tasks_per_node=2)
    [(job, run_dir)] = launcher.submit(two, "test_trainer_ddp:CountingTrainer", local=True)
    assert all(r["finished"] for r in job.results())

    (epoch,) = [r for r in toy.log_rows(run_dir) if r.get("kind") == "epoch"]
    assert epoch["allreduces"] == (STEPS_PER_EPOCH + 1) // 2  # 21 batches: 10 pairs and a last single batch
    s1, s2 = toy.final_state(Path(tmp_path / "runs" / "one")), toy.final_state(run_dir)
    for key in s1:
        assert torch.allclose(s1[key].double(), s2[key].double(), rtol=1e-4, atol=1e-5), key
