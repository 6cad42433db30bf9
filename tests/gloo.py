"""Run a function on 2+ CPU processes joined by torch.distributed (gloo), and collect what each rank returns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_on_ranks(job: Callable[[int, int], Any], world: int, folder: Path) -> list:
    """`job(rank, world)` in `world` spawned processes of one gloo group; what each returned, by rank.
    `job` must be a module-level function (the processes import it by name)."""
    mp.start_processes(_rank_process, args=(job, world, str(folder)), nprocs=world, join=True, start_method="spawn")
    return [torch.load(Path(folder) / f"rank{rank}.pt") for rank in range(world)]


def _rank_process(rank: int, job: Callable[[int, int], Any], world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        torch.save(job(rank, world), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
