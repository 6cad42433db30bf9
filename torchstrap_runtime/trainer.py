"""The Trainer base class: the whole training workflow of a torchstrap experiment, top to bottom.

An experiment subclasses `Trainer` and overrides hooks. The order is fixed (docs/workflow.txt):

    __init__:  initialize_model (then device, dtype, distributed, sync_BN)
               if not training.eval_only: initialize_train_loader
               initialize_val_loader
               if not training.eval_only: initialize_optimizer, initialize_scheduler
               load_checkpoint, initialize_metrics, initialize_criterion, initialize_logger
    train_all_epochs: per epoch: modules.train(); before_train_epoch
               per batch: self.data = batch, self.step = step; before_train_step; train_step; after_train_step
               step the scheduler per epoch if MultiStepLR/StepLR (else per optimizer step)
               after_train_epoch
               if logging.eval_each_epoch: evaluate():
                   modules.eval(); before_eval_epoch; per batch: before_eval_step; eval_step; after_eval_step
                   after_eval_epoch

`train_step` returns the loss. The loop does the rest in one place (`backward`, `optimizer_step`): backward
(through the float16 GradScaler), gradient accumulation (`training.accumulate`, DDP `no_sync` on the inner
batches), clipping, the optimizer step, the per-step scheduler, the weights' EMA. Hyper-parameters come from
the config with `@param("section.key")` (see `torchstrap_runtime.config`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from . import sections as _sections  # noqa: F401  (declares the standard config sections)
from .checkpoint import (BestCheckpoints, check_model_fits, load_torch, rng_state,  # noqa: F401
                         save_torch_atomic, seed_everything, set_rng_state, truncate_run_logs)
from .config import param
from .distributed import (all_reduce_sum, all_reduce_sums, any_rank, broadcast_object, convert_sync_batchnorm,
                          drop_padding, has_batchnorm, setup_distributed)
from .errors import UserError
from .loggers import HDF5_FILE, LOG_FILE, HDF5Logger, JSONLogger
from .optim import PER_EPOCH_SCHEDULERS, build_optimizer, build_scheduler, parameter_groups
from .provenance import new_run_id, run_record, write_json_atomic
from .run_lock import RunLock

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# epoch-record values measured with a clock: they differ between two runs of the same seeds
MEASURED_KEYS = ("time", "images_per_s", "data_wait_share", "peak_memory_mb")


class NonFiniteLoss(RuntimeError):
    """The training loss was NaN or infinite (`training.stop_on_nan`)."""


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
        self.loss: torch.Tensor | None = None  # what train_step returned for the current batch (detached)
        self.stop_requested = False
        self.stop_reason: str | None = None   # "preempted", "stopped early", ... (the log's end line)
        self.finished = False     # set when train_all_epochs ran to its end (or stopped early on patience)
        self.train_loader: Iterable | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.json_logger: JSONLogger | None = None
        self.mirrors = None   # logging.backends (mirrors.py), opened by initialize_logger
        self.hdf5_logger: HDF5Logger | None = None
        self.progress_bar = None

        self.rank, self.local_rank, self.world_size = setup_distributed()
        self.is_main = self.rank == 0
        self.read_loop_settings()
        self.initialize_model()
        self.prepare_model()
        if not self.eval_only:
            self.initialize_train_loader()
        self.initialize_val_loader()
        if not self.eval_only:
            self.initialize_optimizer()
            self.initialize_scheduler()
        self.run_dir = self.make_run_dir()
        self.best = self.make_best_checkpoints()
        self.load_checkpoint()
        self.initialize_metrics()
        self.initialize_criterion()
        self.attach_criterion()
        self.initialize_logger()

    @param("training.accumulate")
    @param("training.ema_decay")
    @param("training.limit_train_batches")
    @param("training.limit_val_batches")
    @param("training.fast_dev_run")
    @param("training.stop_on_nan")
    @param("training.patience")
    def read_loop_settings(self, accumulate: int, ema_decay: float, limit_train_batches: int,
                           limit_val_batches: int, fast_dev_run: bool, stop_on_nan: bool, patience: int) -> None:
        """The `training` values the loop itself reads."""
        if accumulate < 1:
            raise ValueError(f"training.accumulate must be an integer >= 1, got {accumulate}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"training.ema_decay must be in [0, 1) (0 = off), got {ema_decay}")
        self.accumulate, self.ema_decay = accumulate, ema_decay
        self.fast_dev_run, self.stop_on_nan, self.patience = fast_dev_run, stop_on_nan, patience
        self.limit_train_batches = 1 if fast_dev_run else limit_train_batches
        self.limit_val_batches = 1 if fast_dev_run else limit_val_batches

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
    @param("training.compile")
    @param("model.sync_bn")
    def prepare_model(self, device: str, dtype: str, channels_last: bool, grad_clip: float, compile: bool,
                      sync_bn: bool) -> None:
        """Device (CUDA when present), dtype (AMP for bfloat16/float16), DDP and SyncBN, the EMA copy of the
        weights (`training.ema_decay`) and `torch.compile` (`training.compile`) for `self.model`."""
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
        self.ema: dict[str, torch.Tensor] | None = None
        if self.ema_decay > 0:
            self.ema = {k: v.detach().clone() for k, v in self.raw_model.state_dict().items()}
        if compile:
            self.model = torch.compile(self.model)

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
    @param("optimizer.exclude_norm_bias")
    def initialize_optimizer(self, name: str, lr: float, momentum: float, weight_decay: float, nesterov: bool,
                             exclude_norm_bias: bool) -> None:
        """Set `self.optimizer` over the model's parameters (the criterion's, if any, join in attach_criterion)."""
        groups = parameter_groups(self.raw_model, weight_decay, exclude_norm_bias)
        self.optimizer = build_optimizer(name, groups, lr=lr, momentum=momentum, nesterov=nesterov)

    @param("scheduler.name")
    @param("scheduler.warmup_epochs")
    @param("scheduler.step_size")
    @param("scheduler.milestones")
    @param("scheduler.gamma")
    @param("scheduler.min_lr")
    @param("training.epochs")
    def initialize_scheduler(self, name: str, warmup_epochs: float, step_size: int, milestones: list[int],
                             gamma: float, min_lr: float, epochs: int) -> None:
        """Set `self.scheduler` (or None). The loop steps StepLR/MultiStepLR per epoch, others per optimizer step."""
        self.scheduler = build_scheduler(name, self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=epochs,
                                         warmup_epochs=warmup_epochs, step_size=step_size, milestones=milestones,
                                         gamma=gamma, min_lr=min_lr)

    @param("model.load_from")
    @param("model.load_optimizer")
    @param("model.load_scheduler")
    @param("model.load_epoch")
    def load_checkpoint(self, load_from: str, load_optimizer: bool, load_scheduler: bool, load_epoch: bool) -> None:
        """Resume from `run_dir/checkpoints/last.pt` when it exists (everything, exactly), else start
        from `model.load_from` when given (the model, and optionally optimizer, scheduler and epoch)."""
        last = self.checkpoint_path
        if last.exists():
            state = load_torch(last)
            check_model_fits(state, self.raw_model, last)
            self.load_state_dict(state, resume=True)
            if self.is_main:
                print(f"resumed from {last} at epoch {self.epoch}, batch {self.start_batch}", file=sys.stderr)
        elif load_from:
            state = load_torch(Path(load_from))
            check_model_fits(state, self.raw_model, Path(load_from))
            self.raw_model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema = {k: v.detach().clone() for k, v in self.raw_model.state_dict().items()}
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
        """Open `log.jsonl` and `arrays.h5` in the run folder (rank 0 only) and write `config.json`.
        With `training.fast_dev_run` nothing is written."""
        self.log_every, self.show_progress = log_every, progress
        if not self.is_main or self.fast_dev_run:
            return
        self.json_logger = JSONLogger(self.run_dir / LOG_FILE)
        self.hdf5_logger = HDF5Logger(self.run_dir / HDF5_FILE)
        if not (self.run_dir / "config.json").exists():
            write_json_atomic(self.run_dir / "config.json", run_record(type(self), self.train_loader, self.world_size))
        from .mirrors import open_mirrors  # logging.backends; a resumed run continues their runs from self.step

        self.mirrors = open_mirrors(self.run_dir, self.step if self.checkpoint_path.exists() else None)

    # ------------------------------------------------------------------ hooks: training
    def before_train_epoch(self) -> None:
        """Called after `modules.train()`, before the first batch of an epoch."""
        if self.start_batch == 0:
            self.train_sums = {"loss": 0.0, "count": 0}

    def before_train_step(self) -> None:
        """Called with `self.data` and `self.step` set, before `train_step`."""

    def train_step(self) -> torch.Tensor:
        """Forward and criterion of the batch `self.data`; returns the loss (the loop does backward and step)."""
        inputs, targets = self.to_device(self.data)
        with self.autocast():
            outputs = self.model(inputs)
            loss = self.criterion(outputs, targets)
        return loss

    def after_train_step(self) -> None:
        """Accumulate the epoch's training loss (`self.loss`); log it every `logging.log_every` steps."""
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
        sums = all_reduce_sums(self.train_sums, self.device)
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
            if hasattr(self.criterion, "log_prob"):  # the loss holds the output layer (AdaptiveLogSoftmaxWithLoss)
                outputs = self.criterion.log_prob(outputs)
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
        sums = all_reduce_sums(self.val_sums, self.device)
        n = max(1, sums["count"])
        self.epoch_record.update(val_loss=sums["loss"] / n, val_top1=sums["top1"] / n, val_top5=sums["top5"] / n)
        if self.val_confusion is not None:  # rows: true class, columns: predicted class
            self.log_hdf5({"val_confusion": all_reduce_sum(self.val_confusion)})

    # ------------------------------------------------------------------ the loops
    def run(self) -> dict[str, Any]:
        """Train for `training.epochs` (or only evaluate with `training.eval_only`); returns the last epoch record.
        Closes the loggers at the end (`close()`), also when training raised."""
        try:
            if self.eval_only:
                self.epoch_record = {"kind": "eval"}
                self.evaluate()
                self.log(self.epoch_record)
                record = self.epoch_record
            else:
                record = self.train_all_epochs()
            if self.hdf5_logger is not None:
                self.hdf5_logger.drain()  # every array logged so far is in arrays.h5 when run() returns
            # how the run returned, for `torchstrap runs` (cut from the log again on resume)
            self.log({"kind": "end", "status": self.stop_reason or ("preempted" if self.stop_requested else "finished")})
            self.completed = not self.stop_requested
            if self.is_main and not self.stop_requested and not self.eval_only and not self.fast_dev_run:
                from .plots import plot_curves

                plot_curves(self.run_dir)
            return record
        finally:
            self.close()

    def close(self) -> None:
        """Close the progress bar and the loggers (flushing arrays.h5), release the run folder's lock.
        Safe to call more than once."""
        self.close_progress_bar()
        for name in ("json_logger", "hdf5_logger"):
            logger = getattr(self, name, None)
            if logger is not None:
                logger.close()
            setattr(self, name, None)
        if getattr(self, "mirrors", None) is not None:
            self.mirrors.close(finished=getattr(self, "completed", False))
            self.mirrors = None
        if getattr(self, "run_lock", None) is not None:
            self.run_lock.release()

    def print_epoch(self, epochs: int) -> None:
        """One line per epoch under the progress bars: losses, accuracies, learning rate, speed, memory."""
        if not (self.is_main and self.show_progress):
            return
        parts = [f"{k} {100 * v:.2f}%" if "top" in k or "share" in k else f"{k} {v:.4g}"
                 for k, v in self.epoch_record.items() if isinstance(v, float)]
        from tqdm.auto import tqdm

        tqdm.write(f"epoch {self.epoch + 1}/{epochs}: " + ", ".join(parts))

    def print_summary(self, record: dict[str, Any]) -> None:
        """Print the final metrics and where the run folder is."""
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
        print(f"epoch {self.epoch}: {metrics}")
        if "val_top1" in record:
            print(f"final validation top-1 accuracy: {100 * record['val_top1']:.2f}%")
        if self.best is not None and self.best.entries:
            value, epoch = self.best.entries[0]
            print(f"best {self.monitor}: {value:.4f} at epoch {int(epoch)} ({self.run_dir / 'checkpoints' / 'best.pt'})")
        print(f"run folder: {self.run_dir}")

    @param("training.epochs")
    @param("logging.eval_each_epoch")
    @param("logging.eval_every")
    def train_all_epochs(self, epochs: int, eval_each_epoch: bool, eval_every: int) -> dict[str, Any]:
        """The training loop. Returns the last epoch's record (stops early, checkpointed, on `request_stop()`;
        on `training.patience` epochs without a better `logging.monitor`)."""
        if self.fast_dev_run:
            epochs = self.epoch + 1
        self.epoch_record: dict[str, Any] = {}
        while self.epoch < epochs and not self.out_of_patience():
            self.epoch_record = {"kind": "epoch"}
            self.modules.train()
            self.before_train_epoch()
            if not self.train_one_epoch(f"epoch {self.epoch + 1}/{epochs}"):
                return self.epoch_record  # stopped on request, checkpointed
            self.start_batch = 0
            if isinstance(self.scheduler, PER_EPOCH_SCHEDULERS):
                self.scheduler.step()
            self.after_train_epoch()
            if eval_each_epoch and ((self.epoch + 1) % max(1, eval_every) == 0 or self.epoch + 1 == epochs):
                self.evaluate()
            self.log(self.epoch_record)
            self.print_epoch(epochs)
            self.epoch += 1
            kept = self.track_best()
            self.save_checkpoint()
            if kept and self.is_main:  # rank 0 wrote last.pt
                self.best.keep(self.checkpoint_path, self.epoch - 1)
            if self.should_stop():
                return self.epoch_record
        self.finished = True
        return self.epoch_record

    @param("logging.checkpoint_every")
    def train_one_epoch(self, description: str, checkpoint_every: int) -> bool:
        """The batches of `self.epoch` through the step hooks, `backward` and `optimizer_step`; measures speed.
        False when a stop was requested (the checkpoint is saved)."""
        limit = self.train_batches_per_epoch()
        self.progress_bar = self.make_progress_bar(description, total=limit)
        batches = iter(self.epoch_batches(self.train_loader))
        reset_peak_memory(self.device)
        waited, samples, started = 0.0, 0, time.perf_counter()
        self.batch_index = self.start_batch
        while True:
            if limit is not None and self.batch_index >= limit:
                close_iterator(batches)  # batches left over (training.limit_train_batches)
                break
            tick = time.perf_counter()
            self.data = next(batches, None)
            if self.data is None:
                break
            waited += time.perf_counter() - tick
            self.before_train_step()
            boundary = self.at_step_boundary(limit)
            with self.no_sync(not boundary):
                loss = self.train_step()
                if not isinstance(loss, torch.Tensor):
                    raise TypeError(f"{type(self).__name__}.train_step returned {type(loss).__name__}, not the loss: it "
                                    f"must end with `return loss` (the loop does backward and the optimizer step; "
                                    f"a trainer.py generated before Trainer v2 needs `return super().train_step()`)")
                self.loss = loss.detach()
                self.check_finite(self.loss)
                self.backward(loss)
            if boundary:
                self.optimizer_step()
            self.after_train_step()
            samples += batch_size(self.data)
            self.step += 1
            self.batch_index += 1
            if self.progress_bar is not None:
                self.progress_bar.update()
            if boundary and (self.should_stop() or (checkpoint_every and self.step % checkpoint_every == 0)):
                self.save_checkpoint(batch_done=self.batch_index)
                if self.stop_requested:
                    close_iterator(batches)  # FFCV's loading thread would otherwise stay blocked
                    self.close_progress_bar()
                    return False
        self.close_progress_bar()
        elapsed = time.perf_counter() - started
        self.epoch_record.update(images_per_s=samples * self.world_size / max(elapsed, 1e-9),
                                 data_wait_share=waited / max(elapsed, 1e-9), peak_memory_mb=peak_memory_mb(self.device))
        return True

    def at_step_boundary(self, limit: int | None) -> bool:
        """Whether the current batch ends a group of `training.accumulate` (or the epoch): the optimizer steps."""
        done = self.batch_index + 1
        return done % self.accumulate == 0 or done == limit

    def no_sync(self, inner: bool) -> contextlib.AbstractContextManager:
        """DDP's `no_sync()` on the inner batches of an accumulation (no gradient all-reduce), else nothing."""
        model = getattr(self.model, "_orig_mod", self.model)
        if inner and isinstance(model, nn.parallel.DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    def check_finite(self, loss: torch.Tensor) -> None:
        """With `training.stop_on_nan`: a NaN/inf loss (on any rank) stops the run before it reaches the weights."""
        if not self.stop_on_nan:
            return
        bad = not math.isfinite(float(loss))
        if self.world_size > 1:
            bad = any_rank(bad, self.device)
        if bad:
            self.close_progress_bar()
            kept = f"{self.checkpoint_path} holds the last good checkpoint" if self.checkpoint_path.exists() \
                else "no checkpoint was written yet"
            raise NonFiniteLoss(f"the training loss is {float(loss)} at epoch {self.epoch}, step {self.step}: "
                                f"the run stopped and {kept} (lower optimizer.lr, set training.grad_clip, or "
                                f"set training.stop_on_nan false to go on)")

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of `loss / training.accumulate` (scaled by the float16 GradScaler; a no-op scaler otherwise)."""
        if self.accumulate > 1:
            loss = loss / self.accumulate
        self.scaler.scale(loss).backward()

    def optimizer_step(self) -> None:
        """Clip (`training.grad_clip`), step the optimizer, zero the gradients, step a per-step scheduler,
        update the EMA of the weights."""
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None and not isinstance(self.scheduler, PER_EPOCH_SCHEDULERS):
            self.scheduler.step()
        if self.ema is not None:
            self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        """`ema = decay * ema + (1 - decay) * weights` for floating tensors; other buffers are copied."""
        live = self.raw_model.state_dict()
        floats = [k for k, v in self.ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.ema[k] for k in floats], [live[k] for k in floats], 1.0 - self.ema_decay)
        for k, v in self.ema.items():
            if not v.is_floating_point():
                v.copy_(live[k])

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside: the model holds the EMA weights (when `training.ema_decay` is set); restored bitwise after."""
        if self.ema is None:
            yield
            return
        live = self.raw_model.state_dict()
        saved = {k: v.detach().clone() for k, v in live.items()}
        with torch.no_grad():
            for k, v in live.items():
                v.copy_(self.ema[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in live.items():
                    v.copy_(saved[k])

    @torch.no_grad()
    def evaluate(self) -> None:
        """One pass over `self.val_loader` (at most `training.limit_val_batches`) with the eval hooks, on the EMA
        weights when there are; results land in `self.epoch_record`."""
        with self.ema_weights():
            self.modules.eval()
            self.before_eval_epoch()
            total, limit = safe_len(self.val_loader), self.limit_val_batches
            if limit and total is not None:
                total = min(total, limit)
            self.progress_bar = self.make_progress_bar("eval", total=total)
            batches = iter(self.val_loader)
            for batch in itertools.islice(batches, limit or None):
                # a distributed loader pads its last batches (drop_last=False): each sample is evaluated once
                self.data = drop_padding(self.val_loader, *batch) if isinstance(batch, (list, tuple)) else batch
                if batch_size(self.data) == 0:
                    continue
                self.before_eval_step()
                self.eval_step()
                self.after_eval_step()
                if self.progress_bar is not None:
                    self.progress_bar.update()
            if limit:
                close_iterator(batches)
            self.close_progress_bar()
            self.after_eval_epoch()

    def epoch_batches(self, loader: Iterable) -> Iterable:
        """The batches of `self.epoch` from `self.start_batch` on (seeded loaders replay exactly on resume)."""
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch, self.start_batch)
            return loader
        if self.start_batch:
            return itertools.islice(iter(loader), self.start_batch, None)
        return loader

    def train_batches_per_epoch(self) -> int | None:
        """Batches per training epoch: the loader's length capped by `training.limit_train_batches` (None: unknown)."""
        total = safe_len(self.train_loader)
        if self.limit_train_batches:
            return self.limit_train_batches if total is None else min(total, self.limit_train_batches)
        return total

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: training batches / `training.accumulate`, rounded up."""
        return -(-(self.train_batches_per_epoch() or 1) // self.accumulate)

    def request_stop(self, reason: str = "preempted") -> None:
        """Ask the loop to checkpoint after the current optimizer step and return (SLURM requeue, preemption;
        an early-stopping hook passes reason="stopped early", which `torchstrap runs` shows)."""
        self.stop_requested = True
        self.stop_reason = reason

    def should_stop(self) -> bool:
        """Whether a stop was requested; with several ranks, on any of them (so all stop after the same step)."""
        if self.world_size > 1:
            self.stop_requested = any_rank(self.stop_requested, self.device)
        return self.stop_requested

    # ------------------------------------------------------------------ best checkpoints, early stopping
    @param("logging.monitor")
    @param("logging.monitor_mode")
    @param("logging.save_top_k")
    def make_best_checkpoints(self, monitor: str, monitor_mode: str, save_top_k: int) -> BestCheckpoints | None:
        """A `BestCheckpoints` ranking epochs by `logging.monitor` (None when it is '')."""
        self.monitor = monitor
        if self.patience and not monitor:
            raise ValueError(f"training.patience is {self.patience} but logging.monitor is empty: "
                             f"name the value to watch, e.g. --logging.monitor val_top1")
        return BestCheckpoints(self.run_dir / "checkpoints", monitor_mode, save_top_k) if monitor else None

    def track_best(self) -> bool:
        """Rank the finished epoch by its monitored value; True when its checkpoint is among the best."""
        if self.best is None or self.fast_dev_run or self.monitor not in self.epoch_record:
            return False
        return self.best.add(float(self.epoch_record[self.monitor]), self.epoch - 1)

    def out_of_patience(self) -> bool:
        """`training.patience` epochs ran since the best monitored value (early stopping)."""
        if not self.patience or self.best is None:
            return False
        since = self.best.epochs_since_best(self.epoch - 1)
        if since is None or since < self.patience:
            return False
        self.stop_reason = "stopped early"
        if self.is_main and self.show_progress:
            print(f"early stop: no better {self.monitor} for {since} epochs (training.patience {self.patience})",
                  file=sys.stderr)
        return True

    # ------------------------------------------------------------------ logging
    def log(self, values: dict[str, Any]) -> None:
        """Append one JSON line to `log.jsonl` (with epoch, step and wall time). Rank 0 only."""
        if self.json_logger is not None:
            record = self.json_logger.log(values, epoch=self.epoch, step=self.step)
            if self.mirrors is not None:
                self.mirrors.log(record)

    def log_hdf5(self, arrays: dict[str, Any]) -> None:
        """Append one row per key to the datasets of `arrays.h5` (with this row's step and epoch). Rank 0 only."""
        if self.hdf5_logger is not None:
            self.hdf5_logger.log(arrays, step=self.step, epoch=self.epoch)
        if self.mirrors is not None:
            self.mirrors.log_arrays(arrays, step=self.step, epoch=self.epoch)

    def make_progress_bar(self, description: str, total: int | None = None):
        """A tqdm bar on rank 0 when `logging.progress` is on, else None."""
        if not (self.show_progress and self.is_main):
            return None
        from tqdm.auto import tqdm

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
        """Everything an exact resume needs: weights (and their EMA), optimizer, scheduler, scaler, position, RNGs,
        criterion, the best epochs so far, and how far the logs had got (so a resumed run neither repeats nor
        loses rows)."""
        criterion = getattr(self, "criterion", None)
        return {
            "model": self.raw_model.state_dict(),
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "criterion": criterion.state_dict() if isinstance(criterion, nn.Module) else None,
            "epoch": self.epoch,
            "step": self.step,
            "batch": batch,
            "train_sums": dict(self.train_sums) if hasattr(self, "train_sums") else {},
            "best": list(self.best.entries) if self.best is not None else [],
            "rng": rng_state(),
            "loader_seeds": self.train_loader.seed_state() if hasattr(self.train_loader, "seed_state") else None,
            "log_bytes": self.json_logger.tell() if self.json_logger is not None else 0,
            "hdf5_rows": self.hdf5_logger.row_counts() if self.hdf5_logger is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        """Restore a checkpoint. The optimizer, scheduler and criterion states wait in `self.pending_state`
        until `attach_criterion()` (the criterion is built after `load_checkpoint` in the workflow)."""
        self.raw_model.load_state_dict(state["model"])
        if self.ema is not None:  # a checkpoint without one starts the EMA from its weights
            ema = state.get("ema") or self.raw_model.state_dict()
            self.ema = {k: v.detach().to(self.device, copy=True) for k, v in ema.items()}
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.pending_state = {key: state.get(key) for key in ("optimizer", "scheduler", "criterion")}
        if resume:
            self.epoch, self.step, self.start_batch = int(state["epoch"]), int(state["step"]), int(state["batch"])
            sums = dict(state.get("train_sums") or {})   # global sums: rank 0 holds them, the others restart at 0
            self.train_sums = sums if self.is_main else {key: 0.0 * value for key, value in sums.items()}
            if self.best is not None:
                self.best.entries = [list(entry) for entry in state.get("best") or []]
            set_rng_state(state["rng"])
            if state.get("loader_seeds") and hasattr(self.train_loader, "load_seed_state"):
                self.train_loader.load_seed_state(state["loader_seeds"])  # seeds drawn when they were None
            if self.is_main:
                truncate_run_logs(self.run_dir, state.get("log_bytes", 0), state.get("hdf5_rows") or {})

    def save_checkpoint(self, batch_done: int = 0) -> None:
        """Write `run_dir/checkpoints/last.pt` atomically (rank 0). `batch_done` > 0 marks a mid-epoch checkpoint.
        Nothing with `training.fast_dev_run`.

        Called on every rank: with several, the epoch's running sums are summed over ranks into the checkpoint."""
        if self.fast_dev_run:
            return
        sums = getattr(self, "train_sums", {})
        if sums:
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
        """`self.model` without its `torch.compile` and DistributedDataParallel wrappers."""
        model = getattr(self.model, "_orig_mod", self.model)
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

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

    @param("logging.folder")
    @param("logging.run_id")
    def make_run_dir(self, folder: str, run_id: str) -> Path:
        """`<logging.folder>/<logging.run_id>/` (a fresh id is generated when none is given)."""
        if not run_id:
            run_id = broadcast_object(new_run_id())  # every rank must agree on the generated id
        run_dir = Path(folder) / run_id
        if self.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"cannot create the run folder {run_dir}: {error.strerror} (logging.folder)") from None
            self.run_lock = RunLock(run_dir).acquire()  # a second process on this run is refused (run_lock.py)
        return run_dir


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


def batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first element (0 when it has none)."""
    first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
    return len(first) if hasattr(first, "__len__") else 0


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: CUDA memory allocated on `device` since the last reset, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
