"""torch.distributed set-up from the environment (torchrun, submitit or `srun`), rank helpers, and SyncBN.

Where the ranks come from, first match wins:
  1. torchrun / submitit (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`);
  2. an `srun` step (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`; master = first node of the step,
     port derived from the job id);
  3. otherwise one process.
gloo on CPU, nccl on CUDA. `convert_sync_batchnorm` works on CPU too (torch's SyncBatchNorm is CUDA-only).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess

import torch
import torch.distributed as dist
from torch import nn


def _slurm_first_host(nodelist: str) -> str:
    """First host of a SLURM node list (`node[03-05,07],gpu1` -> `node03`), via scontrol when present."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    first = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.match(r"([^\[]+)\[([^\],-]+)", first)
    return match.group(1) + match.group(2) if match else first


def slurm_job_id() -> str | None:
    """`<array job>_<task>` or the job id when running under SLURM, else None."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def distributed_env() -> tuple[int, int, int]:
    """`(rank, local_rank, world_size)` from the environment; exports MASTER_ADDR/PORT for SLURM steps."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"])), int(env["WORLD_SIZE"])
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:   # inside `srun`, not the batch script itself
        world_size = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
        if world_size > 1:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
            env.setdefault("MASTER_ADDR", _slurm_first_host(nodes))
            env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", "0")), world_size
    return 0, 0, 1


def setup_distributed(timeout_s: int = 1800) -> tuple[int, int, int]:
    """Initialise the default process group when the world has more than one process.

    Returns `(rank, local_rank, world_size)`. A single process returns `(0, 0, 1)` and initialises nothing.
    On CUDA, each process uses GPU `local_rank` (modulo the visible GPUs).
    """
    rank, local_rank, world_size = distributed_env()
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return rank, local_rank, world_size


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when `flag` is true on at least one (e.g. one rank caught the stop signal)."""
    if not is_initialized():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def cleanup_distributed() -> None:
    if is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------- SyncBN on any device

class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all ranks), on CPU or GPU.

    Same parameters, buffers and state-dict keys as `nn.BatchNorm*d`. Mean, then variance, are all-reduced
    with autograd-aware collectives, so gradients equal those of one process seeing the whole batch.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.float()
        count = all_reduce(torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device))
        mean = all_reduce(xf.sum(dims)) / count
        centered = xf - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centered * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Every BatchNorm of `model` synchronised across ranks: torch's SyncBatchNorm on CUDA, GlobalBatchNorm else."""
    device = device or next(model.parameters(), torch.empty(0)).device
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---------------------------------------------------------------------- collectives (no-ops on one process)

def is_distributed() -> bool:
    """True when a process group of more than one process is running."""
    return is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place and return it (`t` itself on one process)."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def host_values(sums: dict) -> dict:
    """A copy of a dict of numbers with its one-element tensors read back as Python numbers."""
    return {key: value.item() if isinstance(value, torch.Tensor) else value for key, value in sums.items()}


def all_reduce_sums(sums: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """A dict of numbers (or one-element tensors, read back here) summed over ranks (a copy on one process)."""
    if not is_distributed():
        return host_values(sums)
    keys = sorted(sums)
    values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist()))


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """`t` concatenated over ranks along dim 0 (sizes may differ between ranks), on `t`'s device."""
    if not is_distributed():
        return t
    world = dist.get_world_size()
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def broadcast_tensor(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's values of `t`, in place on every rank (`t` itself on one process)."""
    if is_distributed():
        dist.broadcast(t, src=0)
    return t


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor's rows concatenated over ranks in rank order (sizes may differ), via pickling."""
    if not is_distributed():
        return t
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t)
    return torch.cat(parts)


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (`obj` itself on one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
def drop_padding(loader, *tensors):
    """`tensors` (the batch `loader` yielded last, or values computed from it) without the padding that a
    distributed `torchstrap_runtime.data.Loader` with `drop_last=False` adds so that every rank runs the same
    number of batches: evaluation sums then count each sample exactly once across ranks. Batches of any other
    loader come back unchanged."""
    iterator = getattr(loader, "last_iterator", None)
    batch = getattr(iterator, "batch", None)
    if batch is None or not hasattr(loader, "real_samples"):
        return tensors
    keep = loader.real_samples(batch)
    return tuple(t[:keep] for t in tensors)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the gathered tensor and returns this
    rank's rows (as VICReg's FullGatherLayer): gradients equal those of one process holding the whole batch."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        size = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        ctx.sizes = [int(s.item()) for s in sizes]
        ctx.rank = dist.get_rank()
        longest = max(ctx.sizes)
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, ctx.sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]]


def all_gather_cat_with_grad(t: torch.Tensor) -> torch.Tensor:
    """`t` concatenated over ranks along dim 0 (sizes may differ), differentiable: the backward pass sums the
    gradients of all ranks for this rank's rows, so that with DDP's gradient averaging a loss computed on the
    gathered batch trains as one process on the global batch. `t` itself on one process."""
    if not is_distributed():
        return t
    return _GatherWithGrad.apply(t)


def all_reduce_sum_with_grad(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over ranks (a new tensor), differentiable: the backward pass sums the gradients of all ranks
    too. `t` itself on one process."""
    if not is_distributed():
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def rows_before_rank(rows: int, device: torch.device | str = "cpu") -> int:
    """Where this rank's `rows` start in a batch gathered with `all_gather_cat` (0 on one process)."""
    if not is_distributed():
        return 0
    sizes = all_gather_cat(torch.tensor([rows], device=device))
    return int(sizes[: dist.get_rank()].sum().item())
