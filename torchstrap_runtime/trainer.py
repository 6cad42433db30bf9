"""The Trainer base class: the whole training workflow of a torchstrap experiment, top to bottom.

An experiment subclasses `Trainer` and overrides hooks. The order is fixed:

    __init__:  initialize_model (then device, dtype, distributed, sync_BN)
               if not training.eval_only: initialize_train_loader
               initialize_val_loader
               if not training.eval_only: initialize_optimizer, initialize_scheduler
               load_checkpoint, initialize_metrics, initialize_criterion, initialize_logger
    train_all_epochs: per epoch: modules.train(); before_train_epoch
               per batch: self.data = batch, self.step = step; before_train_step; train_step; after_train_step
               scheduler.step() per epoch for StepLR/MultiStepLR (other schedulers step inside train_step)
               after_train_epoch
               if logging.eval_each_epoch: evaluate():
                   modules.eval(); before_eval_epoch; per batch: before_eval_step; eval_step; after_eval_step
                   after_eval_epoch

Hyper-parameters come from the config with `@param("section.key")` (see `torchstrap_runtime.config`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from . import __version__
from . import sections as _sections  # noqa: F401  (declares the standard config sections)
from .config import config_as_dict, param
from .distributed import any_rank, convert_sync_batchnorm, has_batchnorm, setup_distributed, slurm_job_id
from .loggers import HDF5_FILE, LOG_FILE, HDF5Logger, JSONLogger
from .optim import PER_EPOCH_SCHEDULERS, build_optimizer, build_scheduler, parameter_groups

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Trainer:
    """Base trainer. Override any hook; `run()` trains (or only evaluates with `training.eval_only`)."""

    # ------------------------------------------------------------------ construction
    @param("training.eval_only")
    @param("training.seed")
    def __init__(self, eval_only: bool, seed: int | None) -> None:
        self.eval_only = eval_only
        self.seed = seed
        if seed is not None:
            seed_everything(seed)
        self.epoch = 0            # current epoch (0-based)
        self.step = 0             # global index of the current training batch
        self.batch_index = 0      # index of the current batch within its epoch
        self.start_batch = 0      # first batch of self.epoch to run (non-zero when resuming mid-epoch)
        self.data: Any = None     # the current batch, for the hooks
        self.stop_requested = False
        self.train_loader: Iterable | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

        self.rank, self.local_rank, self.world_size = setup_distributed()
        self.is_main = self.rank == 0
        self.initialize_model()
        self.prepare_model()
        if not self.eval_only:
            self.initialize_train_loader()
        self.initialize_val_loader()
        if not self.eval_only:
            self.initialize_optimizer()
            self.initialize_scheduler()
        self.run_dir = self.make_run_dir()
        self.load_checkpoint()
        self.initialize_metrics()
        self.initialize_criterion()
        self.attach_criterion()
        self.initialize_logger()

    # ------------------------------------------------------------------ hooks: construction
    @param("model.name")
    @param("model.num_classes")
    def initialize_model(self, name: str, num_classes: int) -> None:
        """Set `self.model`. Default: `torchstrap_runtime.models.build_model(model.name)` for 32x32 RGB."""
        from .models import build_model

        self.model = build_model(name, num_classes)

    @param("training.device")
    @param("training.dtype")
    @param("training.channels_last")
    @param("training.grad_clip")
    @param("model.sync_bn")
    def prepare_model(self, device: str, dtype: str, channels_last: bool, grad_clip: float, sync_bn: bool) -> None:
        """Device (CUDA when present), dtype (AMP for bfloat16/float16), DDP and SyncBN for `self.model`."""
        self.grad_clip = grad_clip
        if device == "auto":
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # plain "cuda": this process's GPU
            self.device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.dtype = DTYPES[dtype]
        self.use_amp = self.dtype != torch.float32
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16 and self.device.type == "cuda")
        self.channels_last = channels_last
        self.model = self.model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.world_size > 1:
            if sync_bn and has_batchnorm(self.model):   # torch's SyncBatchNorm on CUDA, GlobalBatchNorm on CPU
                self.model = convert_sync_batchnorm(self.model, self.device)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def initialize_train_loader(self) -> None:
        """Set `self.train_loader` (any iterable of batches; FFCV loaders get `set_epoch` for exact resume)."""
        raise NotImplementedError("override initialize_train_loader (the generated experiment's data.py builds it)")

    def initialize_val_loader(self) -> None:
        """Set `self.val_loader`."""
        raise NotImplementedError("override initialize_val_loader (the generated experiment's data.py builds it)")

    @param("optimizer.name")
    @param("optimizer.lr")
    @param("optimizer.momentum")
    @param("optimizer.weight_decay")
    @param("optimizer.nesterov")
    def initialize_optimizer(self, name: str, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> None:
        """Set `self.optimizer`: SGD, Adam or AdamW over the model's parameters (and the criterion's, if any)."""
        self.optimizer = build_optimizer(name, parameter_groups(self.raw_model, weight_decay), lr=lr,
                                         momentum=momentum, nesterov=nesterov)

    @param("scheduler.name")
    @param("scheduler.warmup_epochs")
    @param("scheduler.step_size")
    @param("scheduler.milestones")
    @param("scheduler.gamma")
    @param("training.epochs")
    def initialize_scheduler(self, name: str, warmup_epochs: float, step_size: int, milestones: list[int],
                             gamma: float, epochs: int) -> None:
        """Set `self.scheduler` (or None). Cosine and one-cycle step per batch; step/multistep per epoch."""
        self.scheduler = build_scheduler(name, self.optimizer, steps_per_epoch=len(self.train_loader), epochs=epochs,
                                         warmup_epochs=warmup_epochs, step_size=step_size, milestones=milestones,
                                         gamma=gamma)

    @param("model.load_from")
    @param("model.load_optimizer")
    @param("model.load_scheduler")
    @param("model.load_epoch")
    def load_checkpoint(self, load_from: str, load_optimizer: bool, load_scheduler: bool, load_epoch: bool) -> None:
        """Resume from `run_dir/checkpoints/last.pt` when it exists (everything, exactly), else start
        from `model.load_from` when given (the model, and optionally optimizer, scheduler and epoch)."""
        last = self.checkpoint_path
        if last.exists():
            self.load_state_dict(load_torch(last), resume=True)
            if self.is_main:
                print(f"resumed from {last} at epoch {self.epoch}, batch {self.start_batch}", file=sys.stderr)
        elif load_from:
            state = load_torch(Path(load_from))
            self.raw_model.load_state_dict(state["model"])
            self.pending_state = {"optimizer": state.get("optimizer") if load_optimizer else None,
                                  "scheduler": state.get("scheduler") if load_scheduler else None}
            if load_epoch:
                self.epoch = int(state.get("epoch", 0))

    def initialize_metrics(self) -> None:
        """Set up metric accumulators. Default: running sums for train loss and val loss/top-1/top-5."""
        self.train_sums: dict[str, float] = getattr(self, "train_sums", {})  # restored when resuming
        self.val_sums: dict[str, float] = {}

    @param("criterion.name")
    @param("criterion.params")
    @param("criterion.miner")
    @param("criterion.miner_params")
    def initialize_criterion(self, name: str, params: dict, miner: str, miner_params: dict) -> None:
        """Set `self.criterion` from the `criterion` section (any torch.nn / pytorch-metric-learning loss, CoKe)."""
        from .criteria import build_criterion

        self.criterion = build_criterion(name, params or None, miner or None, miner_params or None).to(self.device)

    @param("logging.log_every")
    @param("logging.progress")
    def initialize_logger(self, log_every: int, progress: bool) -> None:
        """Open `log.jsonl` and `arrays.h5` in the run folder (rank 0 only) and write `config.json`."""
        self.log_every, self.show_progress = log_every, progress
        self.json_logger = JSONLogger(self.run_dir / LOG_FILE) if self.is_main else None
        self.hdf5_logger = HDF5Logger(self.run_dir / HDF5_FILE) if self.is_main else None
        if self.is_main and not (self.run_dir / "config.json").exists():
            write_json_atomic(self.run_dir / "config.json", self.run_record())
        # runs (issue 13): mirrors of the log (logging.backends); a resume continues their runs from self.step
        from .mirrors import open_mirrors

        self.mirrors = open_mirrors(self.run_dir, self.step if self.checkpoint_path.exists() else None) \
            if self.is_main else None

    # ------------------------------------------------------------------ hooks: training
    def before_train_epoch(self) -> None:
        """Called after `modules.train()`, before the first batch of an epoch."""
        if self.start_batch == 0:
            self.train_sums = {"loss": 0.0, "count": 0}

    def before_train_step(self) -> None:
        """Called with `self.data` and `self.step` set, before `train_step`."""

    def train_step(self) -> None:
        """Forward, criterion, backward, optimizer step, and per-step scheduler step."""
        inputs, targets = self.to_device(self.data)
        with self.autocast():
            outputs = self.model(inputs)
            loss = self.criterion(outputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward_and_step(loss)
        if self.scheduler is not None and not isinstance(self.scheduler, PER_EPOCH_SCHEDULERS):
            self.scheduler.step()
        self.loss = loss.detach()

    def after_train_step(self) -> None:
        """Accumulate the epoch's training loss; log it every `logging.log_every` steps."""
        loss = float(self.loss)
        self.train_sums["loss"] += loss
        self.train_sums["count"] += 1
        if self.log_every and self.step % self.log_every == 0:
            if self.world_size > 1:  # log the global batch's loss (every rank takes this branch together)
                loss = all_reduce_sums({"loss": loss}, self.device)["loss"] / self.world_size
            self.log({"kind": "train_step", "train_loss": loss, "lr": self.optimizer.param_groups[0]["lr"]})
        if self.progress_bar is not None:
            self.progress_bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def after_train_epoch(self) -> None:
        """Store the epoch's mean training loss (over all ranks) in `self.epoch_record` (logged after evaluation)."""
        sums = all_reduce_sums(self.train_sums, self.device) if self.world_size > 1 else self.train_sums
        self.epoch_record["train_loss"] = sums["loss"] / max(1, sums["count"])
        self.epoch_record["lr"] = self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------ hooks: evaluation
    def before_eval_epoch(self) -> None:
        """Called after `modules.eval()`, before the first validation batch."""
        self.val_sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0}
        self.val_confusion: torch.Tensor | None = None

    def before_eval_step(self) -> None:
        """Called with `self.data` set to a validation batch."""

    def test_time_augmentation(self, inputs: torch.Tensor) -> torch.Tensor:
        """The prediction used by `eval_step`; override for test-time augmentation (e.g. average with flips)."""
        return self.model(inputs)

    def eval_step(self) -> None:
        """Loss and top-1/top-5 accuracy of a validation batch (under `torch.no_grad`)."""
        inputs, targets = self.to_device(self.data)
        with self.autocast():
            outputs = self.test_time_augmentation(inputs)
            loss = self.criterion(outputs, targets)
        top1, top5 = topk_correct(outputs.float(), targets, (1, 5))
        n = targets.shape[0]
        self.val_sums["loss"] += float(loss) * n
        self.val_sums["top1"] += top1
        self.val_sums["top5"] += top5
        self.val_sums["count"] += n
        self.val_confusion = accumulate_confusion(self.val_confusion, outputs, targets)

    def after_eval_step(self) -> None:
        """Called after each `eval_step`."""

    def after_eval_epoch(self) -> None:
        """Reduce the validation sums across ranks and store them in `self.epoch_record`."""
        sums = all_reduce_sums(self.val_sums, self.device) if self.world_size > 1 else self.val_sums
        n = max(1, sums["count"])
        self.epoch_record.update(val_loss=sums["loss"] / n, val_top1=sums["top1"] / n, val_top5=sums["top5"] / n)
        if self.val_confusion is not None:  # rows: true class, columns: predicted class
            if self.world_size > 1:
                import torch.distributed as dist

                dist.all_reduce(self.val_confusion)
            self.log_hdf5({"val_confusion": self.val_confusion})

    # ------------------------------------------------------------------ the loops
    def run(self) -> dict[str, Any]:
        """Train for `training.epochs` (or only evaluate with `training.eval_only`); returns the last epoch record."""
        if self.eval_only:
            self.epoch_record = {"kind": "eval"}
            self.evaluate()
            self.log(self.epoch_record)
            record = self.epoch_record
        else:
            record = self.train_all_epochs()
        if self.hdf5_logger is not None:
            self.hdf5_logger.drain()  # every array logged so far is in arrays.h5 when run() returns
        # runs (issue 13): how the run returned, for `torchstrap runs` (cut from the log again on resume)
        self.log({"kind": "end", "status": getattr(self, "stop_reason", "preempted") if self.stop_requested
                  else "finished"})
        if getattr(self, "mirrors", None) is not None:
            self.mirrors.close(finished=not self.stop_requested)
        if self.is_main and not self.stop_requested and not self.eval_only:
            from .plots import plot_curves

            plot_curves(self.run_dir)
        return record

    def print_epoch(self, epochs: int) -> None:
        """One line per epoch under the progress bars: losses, accuracies, learning rate."""
        if not (self.is_main and self.show_progress):
            return
        parts = [f"{k} {100 * v:.2f}%" if "top" in k else f"{k} {v:.4g}" for k, v in self.epoch_record.items()
                 if isinstance(v, float)]
        from tqdm.auto import tqdm

        tqdm.write(f"epoch {self.epoch + 1}/{epochs}: " + ", ".join(parts))

    def print_summary(self, record: dict[str, Any]) -> None:
        """Print the final metrics and where the run folder is."""
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
        print(f"epoch {self.epoch}: {metrics}")
        if "val_top1" in record:
            print(f"final validation top-1 accuracy: {100 * record['val_top1']:.2f}%")
        print(f"run folder: {self.run_dir}")

    @param("training.epochs")
    @param("logging.eval_each_epoch")
    @param("logging.checkpoint_every")
    def train_all_epochs(self, epochs: int, eval_each_epoch: bool, checkpoint_every: int) -> dict[str, Any]:
        """The training loop. Returns the last epoch's record (stops early, checkpointed, on `request_stop()`)."""
        self.epoch_record: dict[str, Any] = {}
        while self.epoch < epochs:
            self.epoch_record = {"kind": "epoch"}
            self.modules.train()
            self.before_train_epoch()
            self.progress_bar = self.make_progress_bar(f"epoch {self.epoch + 1}/{epochs}")
            batches = iter(self.epoch_batches(self.train_loader))
            for self.batch_index, self.data in enumerate(batches, start=self.start_batch):
                self.before_train_step()
                self.train_step()
                self.after_train_step()
                self.step += 1
                if self.progress_bar is not None:
                    self.progress_bar.update()
                if self.should_stop() or (checkpoint_every and self.step % checkpoint_every == 0):
                    self.save_checkpoint(batch_done=self.batch_index + 1)
                    if self.stop_requested:
                        close_iterator(batches)  # FFCV's loading thread would otherwise stay blocked
                        self.close_progress_bar()
                        return self.epoch_record
            self.close_progress_bar()
            self.start_batch = 0
            if isinstance(self.scheduler, PER_EPOCH_SCHEDULERS):
                self.scheduler.step()
            self.after_train_epoch()
            if eval_each_epoch:
                self.evaluate()
            self.log(self.epoch_record)
            self.print_epoch(epochs)
            self.epoch += 1
            self.save_checkpoint()
            if self.should_stop():
                break
        return self.epoch_record

    @torch.no_grad()
    def evaluate(self) -> None:
        """One pass over `self.val_loader` with the eval hooks; results land in `self.epoch_record`."""
        self.modules.eval()
        self.before_eval_epoch()
        self.progress_bar = self.make_progress_bar("eval", total=safe_len(self.val_loader))
        for self.data in self.val_loader:
            self.before_eval_step()
            self.eval_step()
            self.after_eval_step()
            if self.progress_bar is not None:
                self.progress_bar.update()
        self.close_progress_bar()
        self.after_eval_epoch()

    def epoch_batches(self, loader: Iterable) -> Iterable:
        """The batches of `self.epoch` from `self.start_batch` on (seeded loaders replay exactly on resume)."""
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch, self.start_batch)
            return loader
        if self.start_batch:
            import itertools

            return itertools.islice(iter(loader), self.start_batch, None)
        return loader

    def request_stop(self, reason: str = "preempted") -> None:
        """Ask the loop to checkpoint after the current step and return (SLURM requeue, preemption; an
        early-stopping hook passes reason="stopped early", which `torchstrap runs` shows)."""
        self.stop_requested = True
        self.stop_reason = reason

    def should_stop(self) -> bool:
        """Whether a stop was requested; with several ranks, on any of them (so all stop after the same step)."""
        if self.world_size > 1:
            self.stop_requested = any_rank(self.stop_requested, self.device)
        return self.stop_requested

    # ------------------------------------------------------------------ logging
    def log(self, values: dict[str, Any]) -> None:
        """Append one JSON line to `log.jsonl` (with epoch, step and wall time). Rank 0 only."""
        if self.json_logger is not None:
            record = self.json_logger.log(values, epoch=self.epoch, step=self.step)
            if getattr(self, "mirrors", None) is not None:   # runs (issue 13)
                self.mirrors.log(record)

    def log_hdf5(self, arrays: dict[str, Any]) -> None:
        """Append one row per key to the datasets of `arrays.h5` (with this row's step and epoch). Rank 0 only."""
        if self.hdf5_logger is not None:
            self.hdf5_logger.log(arrays, step=self.step, epoch=self.epoch)
        if getattr(self, "mirrors", None) is not None:   # runs (issue 13)
            self.mirrors.log_arrays(arrays, step=self.step, epoch=self.epoch)

    def make_progress_bar(self, description: str, total: int | None = None):
        """A tqdm bar on rank 0 when `logging.progress` is on, else None."""
        if not (self.show_progress and self.is_main):
            return None
        from tqdm.auto import tqdm

        if total is None:
            total = safe_len(self.train_loader)
        return tqdm(total=total, initial=self.start_batch if description != "eval" else 0,
                    desc=description, leave=False, dynamic_ncols=True, mininterval=0.5)

    def close_progress_bar(self) -> None:
        if getattr(self, "progress_bar", None) is not None:
            self.progress_bar.close()
        self.progress_bar = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def state_dict(self, batch: int = 0) -> dict[str, Any]:
        """Everything an exact resume needs: weights, optimizer, scheduler, scaler, position, RNGs, criterion,
        and how far the logs had got (so a resumed run neither repeats nor loses rows)."""
        criterion = getattr(self, "criterion", None)
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "criterion": criterion.state_dict() if isinstance(criterion, nn.Module) else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch": batch,
            "train_sums": dict(self.train_sums) if hasattr(self, "train_sums") else {},
            "rng": rng_state(),
            "loader_seeds": self.train_loader.seed_state() if hasattr(self.train_loader, "seed_state") else None,
            "log_bytes": self.json_logger.tell() if getattr(self, "json_logger", None) else 0,
            "hdf5_rows": self.hdf5_logger.row_counts() if getattr(self, "hdf5_logger", None) else {},
        }

    def load_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        """Restore a checkpoint. The optimizer, scheduler and criterion states wait in `self.pending_state`
        until `attach_criterion()` (the criterion is built after `load_checkpoint` in the workflow)."""
        self.raw_model.load_state_dict(state["model"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.pending_state = {key: state.get(key) for key in ("optimizer", "scheduler", "criterion")}
        if resume:
            self.epoch, self.step, self.start_batch = int(state["epoch"]), int(state["step"]), int(state["batch"])
            sums = dict(state.get("train_sums") or {})   # global sums: rank 0 holds them, the others restart at 0
            self.train_sums = sums if self.is_main else {key: 0.0 * value for key, value in sums.items()}
            set_rng_state(state["rng"])
            if state.get("loader_seeds") and hasattr(self.train_loader, "load_seed_state"):
                self.train_loader.load_seed_state(state["loader_seeds"])  # seeds drawn when they were None
            if self.is_main:
                truncate_run_logs(self.run_dir, state.get("log_bytes", 0), state.get("hdf5_rows") or {})

    def save_checkpoint(self, batch_done: int = 0) -> None:
        """Write `run_dir/checkpoints/last.pt` atomically (rank 0). `batch_done` > 0 marks a mid-epoch checkpoint.

        Called on every rank: with several, the epoch's running sums are summed over ranks into the checkpoint."""
        sums = getattr(self, "train_sums", {})
        if self.world_size > 1 and sums:
            sums = all_reduce_sums(sums, self.device)
        if self.is_main:
            state = self.state_dict(batch=batch_done)
            state["train_sums"] = dict(sums)
            save_torch_atomic(state, self.checkpoint_path)

    def attach_criterion(self) -> None:
        """After `initialize_criterion`: give the optimizer the criterion's learnable parameters (ArcFace,
        ProxyAnchor, ... have some; the scheduler is rebuilt to cover them), then restore the states that a
        checkpoint left pending."""
        learnable = [p for p in self.criterion.parameters() if p.requires_grad] if isinstance(self.criterion, nn.Module) else []
        if learnable and self.optimizer is not None:
            self.optimizer.add_param_group({"params": learnable})
            if self.scheduler is not None:
                self.initialize_scheduler()
        pending, self.pending_state = getattr(self, "pending_state", {}), {}
        if pending.get("criterion") and isinstance(self.criterion, nn.Module):
            self.criterion.load_state_dict(pending["criterion"])
        if pending.get("optimizer") and self.optimizer is not None:
            self.optimizer.load_state_dict(pending["optimizer"])
        if pending.get("scheduler") and self.scheduler is not None:
            self.scheduler.load_state_dict(pending["scheduler"])

    # ------------------------------------------------------------------ helpers
    @property
    def raw_model(self) -> nn.Module:
        """`self.model` without its DistributedDataParallel wrapper."""
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    @property
    def modules(self) -> nn.ModuleDict:
        """What `train()`/`eval()` toggle: the model, and the criterion when it is a module."""
        modules = nn.ModuleDict({"model": self.model})
        if isinstance(getattr(self, "criterion", None), nn.Module):
            modules["criterion"] = self.criterion
        return modules

    def to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """`(inputs, targets)` of a batch on `self.device`; targets flattened to shape (N,)."""
        inputs, targets = batch[0], batch[1]
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, targets.to(self.device, non_blocking=True).view(-1).long()

    def autocast(self) -> contextlib.AbstractContextManager:
        """`torch.autocast` to `training.dtype` when it is bfloat16/float16, else a no-op context."""
        if self.use_amp:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward pass, gradient clipping and optimizer step (through the AMP grad scaler for float16)."""
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.clip_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.clip_gradients()
            self.optimizer.step()

    def clip_gradients(self) -> None:
        """Clip the gradient norm to `training.grad_clip` (when > 0)."""
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.grad_clip)

    @param("logging.folder")
    @param("logging.run_id")
    def make_run_dir(self, folder: str, run_id: str) -> Path:
        """`<logging.folder>/<logging.run_id>/` (a fresh id is generated when none is given)."""
        if not run_id:
            run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
            if self.world_size > 1:  # every rank must agree on the generated id
                run_id = broadcast_object(run_id)
        run_dir = Path(folder) / run_id
        if self.is_main:
            try:
                (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SystemExit(f"cannot create the run folder {run_dir}: {error.strerror}") from None
        return run_dir

    def run_record(self) -> dict[str, Any]:
        """What `config.json` holds: every resolved hyper-parameter, versions and the experiment's git state."""
        repo, config = find_experiment_root(type(self)), config_as_dict()
        seeds = {f"{section}.{key}": value for section, params in config.items() for key, value in params.items()
                 if "seed" in key}
        return {
            "config": config,
            "seeds": {**seeds, "train_loader_resolved": resolved_loader_seeds(self.train_loader)},
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                         "torchstrap_runtime": __version__, "template": template_version(repo)},
            "git": git_state(repo),
            "world_size": self.world_size,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": sys.argv,
            "slurm_job_id": slurm_job_id(),  # runs (issue 13): `torchstrap runs` asks sacct about it
        }


# ---------------------------------------------------------------------- module helpers
def accumulate_confusion(confusion: torch.Tensor | None, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Add a batch to a (classes x classes) confusion matrix of counts (rows: target, columns: prediction)."""
    classes = outputs.shape[1]
    counts = torch.bincount(targets * classes + outputs.argmax(1), minlength=classes * classes)
    counts = counts[: classes * classes].view(classes, classes)
    return counts if confusion is None else confusion + counts


def topk_correct(outputs: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    """Number of samples whose target is among the top-k outputs, for each k (k capped at the class count)."""
    kmax = min(max(ks), outputs.shape[1])
    top = outputs.topk(kmax, dim=1).indices
    hits = top == targets.view(-1, 1)
    return [float(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def close_iterator(iterator: Any) -> None:
    """Stop an epoch iterator left before its end (FFCV's runs a loading thread)."""
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def safe_len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """python/numpy/torch (and CUDA) RNG states in types that `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_gauss": (int(np_state[3]), float(np_state[4])),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_torch_atomic(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_torch(path: Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; a missing or unreadable file is a clear error."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise RuntimeError(f"cannot load checkpoint {path}: {error}") from error


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def truncate_run_logs(run_dir: Path, log_bytes: int, hdf5_rows: dict[str, int]) -> None:
    """Cut `log.jsonl` and `arrays.h5` back to where they were at the checkpoint (no duplicated rows)."""
    log = run_dir / LOG_FILE
    if log.exists() and log.stat().st_size > log_bytes:
        with open(log, "r+b") as f:
            f.truncate(log_bytes)
    if (run_dir / HDF5_FILE).exists():
        HDF5Logger(run_dir / HDF5_FILE).truncate_rows(hdf5_rows)


def all_reduce_sums(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    import torch.distributed as dist

    keys = sorted(sums)
    values = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist()))


def broadcast_object(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolved_loader_seeds(loader: Any) -> dict[str, Any] | None:
    """The seeds a seeded loader actually uses (None seeds drawn at build time), to replay the run."""
    if not hasattr(loader, "augmentation_seeds"):
        return None
    return {"order": loader.seed, "augmentations": loader.augmentation_seeds}


def find_experiment_root(cls: type) -> Path | None:
    """The folder holding `.copier-answers.yml` above the module that defines `cls` (or the cwd)."""
    import inspect

    try:
        start = Path(inspect.getfile(cls)).resolve().parent
    except (TypeError, OSError):
        start = Path.cwd()
    for folder in (start, *start.parents, Path.cwd(), *Path.cwd().parents):
        if (folder / ".copier-answers.yml").exists():
            return folder
    return None


def template_version(repo: Path | None) -> str | None:
    if repo is None:
        return None
    for line in (repo / ".copier-answers.yml").read_text().splitlines():
        if line.startswith("_commit:"):
            return line.split(":", 1)[1].strip()
    return None


def git_state(repo: Path | None) -> dict[str, Any]:
    """`{"commit": sha, "dirty": bool}` of the experiment's git repository (None when it is not one)."""
    if repo is None:
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
