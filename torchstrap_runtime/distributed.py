"""torch.distributed set-up from the environment (torchrun or SLURM), and rank helpers."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def setup_distributed() -> tuple[int, int, int]:
    """Initialise the default process group when the world has more than one process.

    Returns `(rank, local_rank, world_size)`. Reads torchrun's variables, else SLURM's; uses nccl on
    CUDA and gloo otherwise. A single process returns `(0, 0, 1)` and initialises nothing.
    """
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return rank, local_rank, world_size


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
