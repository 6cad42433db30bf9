"""Device and precision: which device a process trains on, the compute dtype (AMP), the float16 GradScaler,
channels_last, the DistributedDataParallel and SyncBN wrapping, `torch.compile`, deterministic algorithms,
and peak memory."""

from __future__ import annotations

import contextlib
import os
import resource
from typing import Any

import torch
from torch import nn

from .config import param
from .distributed import convert_sync_batchnorm, has_batchnorm
from .errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # training.dtype
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # training.compile_mode


def choose_device(device: str, local_rank: int) -> torch.device:
    """`training.device` as a torch.device: 'auto' is this process's GPU when there is one, else the CPU;
    a plain 'cuda' is this process's GPU. A CUDA device becomes the current one."""
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    chosen = checked_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen


DEVICE_RULE = "expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'"


def checked_device(device: str) -> torch.device:
    """`training.device` as a torch.device this machine has; a UserError saying what it has otherwise."""
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"training.device {device!r} is not a device: {DEVICE_RULE}") from None
    if chosen.type == "mps" and torch.backends.mps.is_available():
        return chosen
    if chosen.type not in ("cpu", "cuda") or (chosen.type == "cpu" and chosen.index not in (None, 0)):
        raise UserError(f"training.device {device!r} is not a device this machine trains on: {DEVICE_RULE}")
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"training.device is {device!r} but this machine has no CUDA GPU that torch can use; "
                            f"use 'auto' or 'cpu'")
        if chosen.index is not None and chosen.index >= count:
            raise UserError(f"training.device is {device!r} but this machine has {count} GPU"
                            f"{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})")
    return chosen


def use_deterministic_algorithms() -> None:
    """training.deterministic: only deterministic kernels from now on in this process (an op without one raises;
    the entry point names it in one sentence, see errors.NONDETERMINISTIC_OP), cuDNN's deterministic algorithms
    without autotuning, and the fixed workspace cuBLAS's deterministic matmuls need."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before the first matmul
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def check_dtype(device: torch.device, dtype: str) -> None:
    """float16 training needs CUDA (its loss scaling, the GradScaler, runs only there): a UserError otherwise."""
    if dtype == "float16" and device.type != "cuda":
        raise UserError(f"training.dtype float16 needs a CUDA GPU (loss scaling runs only there) but training "
                        f"runs on {device.type}; use bfloat16 or float32")


def grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """The loss scaler of float16 training on CUDA; a disabled one (a no-op) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """`torch.autocast` to `dtype` when it is bfloat16/float16, else a no-op context."""
    if dtype != torch.float32:
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


@param("training.device")
@param("training.dtype")
@param("training.channels_last")
@param("training.compile")
@param("training.compile_mode")
@param("training.cudnn_benchmark")
@param("model.sync_bn")
def prepare_model(model: nn.Module, local_rank: int, world_size: int, device: str, dtype: str, channels_last: bool,
                  compile: bool, compile_mode: str, cudnn_benchmark: bool,
                  sync_bn: bool) -> tuple[nn.Module, torch.device, torch.dtype, bool]:
    """`(model, device, dtype, channels_last)`: the model on its device (`choose_device`), in the channels_last
    memory format if asked; with several processes its BatchNorms synchronised (`sync_bn`: torch's SyncBatchNorm
    on CUDA, GlobalBatchNorm on CPU) and wrapped in DDP; compiled with `training.compile` in
    `training.compile_mode`. `training.cudnn_benchmark` lets cuDNN time its convolution algorithms per shape."""
    chosen = choose_device(device, local_rank)
    check_dtype(chosen, dtype)
    torch.backends.cudnn.benchmark = cudnn_benchmark and not torch.are_deterministic_algorithms_enabled()
    model = model.to(chosen)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world_size > 1:
        if sync_bn and has_batchnorm(model):
            model = convert_sync_batchnorm(model, chosen)
        device_ids = [chosen.index] if chosen.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile:
        model = torch.compile(model, mode=compile_mode)
    return model, chosen, DTYPES[dtype], channels_last


def unwrap(model: nn.Module) -> nn.Module:
    """`model` without its `torch.compile` and DistributedDataParallel wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_sync(model: nn.Module, inner: bool) -> contextlib.AbstractContextManager:
    """DDP's `no_sync()` on the inner batches of a gradient accumulation (no all-reduce), else nothing."""
    model = getattr(model, "_orig_mod", model)
    if inner and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def inputs_and_targets(batch: Any, device: torch.device, channels_last: bool,
                       pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, targets)` of a batch on `device`; targets flattened to shape (N,) as int64. With `pin`, host
    tensors bound for CUDA are copied from page-locked memory, so the copies do not block the host."""
    inputs, targets = batch[0], batch[1]
    inputs = to_device_async(inputs, device, pin)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, to_device_async(targets, device, pin).view(-1).long()


def to_device_async(tensor: torch.Tensor, device: torch.device, pin: bool = False) -> torch.Tensor:
    """`tensor` on `device` without waiting for the copy: a CPU tensor bound for CUDA is first page-locked
    (`pin`, when it is not already, e.g. from a DataLoader with pin_memory=True), which a non-blocking copy needs
    to be asynchronous; torch's pinned-memory cache keeps the page-locked copy until the transfer is done."""
    if pin and device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA memory allocated on `device` since the last reset, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
