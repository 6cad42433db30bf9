"""The Trainer base class: the whole training workflow of a torchstrap experiment, top to bottom.

An experiment subclasses `Trainer` and overrides hooks. They run in the order of docs/workflow.txt (the
product spec, shown in every generated trainer.py), which this file follows top to bottom: `__init__`,
then `train_all_epochs`, `train_one_epoch` and `evaluate`.

`train_step` returns the loss. The loop does the rest in one place (`backward`, `optimizer_step`): backward
(through the float16 GradScaler), gradient accumulation (`training.accumulate`, DDP `no_sync` on the inner
batches), clipping, the optimizer step, the per-step scheduler, the weights' EMA. Hyper-parameters come from
the config with `@param("section.key")` (see `torchstrap_runtime.config`).

The helpers the hooks call, checkpoints and the run folder's plumbing: trainer_base.py; the parts, one module
each: device.py, ema.py, checkpoint.py (what a checkpoint holds and how it is restored), best.py (best epochs,
patience), metrics.py, batches.py, progress.py, run_folder.py (file names, atomic writes, the lock).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from . import checkpoint as ckpt
from . import device as dev
from . import doctor
from . import sections as _sections  # noqa: F401  (declares the standard config sections)
from .batches import batch_size, close_iterator, epoch_batches, limited_len, safe_len
from .best import best_checkpoints
from .config import param
from .distributed import all_reduce_sums, drop_padding, setup_distributed
from .ema import ema_copy, update_ema
from .errors import UserError
from .faults import stop_on_faults
from .metrics import ClassificationSums, add_to_sums, class_scores, means, new_sums
from .optim import PER_EPOCH_SCHEDULERS, build_optimizer, build_scheduler, parameter_groups
from .signals import stop_on_signals
from .steps_record import open_steps_record
from .trainer_base import NonFiniteLoss, TrainerBase  # noqa: F401  (NonFiniteLoss: raised by the loop)

# epoch-record values measured with a clock: they differ between two runs of the same seeds
MEASURED_KEYS = ("time", "images_per_s", "data_wait_share", "peak_memory_mb")


class Trainer(TrainerBase):
    """Base trainer. Override any hook; `run()` trains (or only evaluates with `training.eval_only`)."""

    # ------------------------------------------------------------------ construction
    @param("training.eval_only")
    @param("training.seed")
    @param("training.deterministic")
    def __init__(self, eval_only: bool, seed: int | None, deterministic: bool = False) -> None:
        self.eval_only, self.seed = eval_only, seed
        if seed is not None:
            ckpt.seed_everything(seed)
        if deterministic:
            dev.use_deterministic_algorithms()
        self.epoch = 0            # current epoch (0-based)
        self.step = 0             # global index of the current training batch
        self.batch_index = 0      # index of the current batch within its epoch
        self.start_batch = 0      # first batch of self.epoch to run (non-zero when resuming mid-epoch)
        self.data: Any = None     # the current batch, for the hooks
        self.loss: torch.Tensor | None = None  # what train_step returned for the current batch (detached)
        self.finished = False     # set when train_all_epochs ran to its end (or stopped early on patience)
        self.train_loader: Iterable | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.checkpoint_state: dict[str, Any] | None = None  # the checkpoint load_checkpoint read, while restored
        self.rank, self.local_rank, self.world_size = setup_distributed()
        self.is_main = self.rank == 0
        self.read_loop_settings()
        self.initialize_model()
        self.prepare_model()
        if not self.eval_only:
            self.initialize_train_loader()
        self.initialize_val_loader()
        self.check_loaders()  # a training epoch with no step, a dataset that does not fit the model
        if not self.eval_only:
            self.initialize_optimizer()
            self.initialize_scheduler()
        self.run_dir = self.make_run_dir()
        self.best = best_checkpoints(self.run_dir)  # logging.monitor's best epochs, training.patience (or None)
        self.load_checkpoint()  # reads last.pt or model.load_from; restores the weights, EMA, position and RNGs
        self.initialize_metrics()
        self.initialize_criterion()
        self.attach_criterion()
        # the same checkpoint's criterion, optimizer and scheduler states, now that all three exist
        ckpt.restore_optimization_state(self, self.checkpoint_state or {})
        self.checkpoint_state = None
        self.initialize_logger()

    @param("training.accumulate")
    @param("training.grad_clip")
    @param("training.ema_decay")
    @param("training.limit_train_batches")
    @param("training.limit_val_batches")
    @param("training.fast_dev_run")
    @param("training.stop_on_nan")
    def read_loop_settings(self, accumulate: int, grad_clip: float, ema_decay: float, limit_train_batches: int,
                           limit_val_batches: int, fast_dev_run: bool, stop_on_nan: bool) -> None:
        """The `training` values the loop itself reads."""
        self.accumulate, self.grad_clip, self.ema_decay = accumulate, grad_clip, ema_decay
        self.fast_dev_run, self.stop_on_nan = fast_dev_run, stop_on_nan
        self.limit_train_batches = 1 if fast_dev_run else limit_train_batches
        self.limit_val_batches = 1 if fast_dev_run else limit_val_batches

    # ------------------------------------------------------------------ hooks: construction
    @param("model.name")
    @param("model.num_classes")
    def initialize_model(self, name: str, num_classes: int) -> None:
        """Set `self.model`. Default: `torchstrap_runtime.models.build_model(model.name)` for 32x32 RGB."""
        from .models import build_model

        self.model = build_model(name, num_classes)

    def prepare_model(self) -> None:
        """Device (CUDA when present), dtype (AMP for bfloat16/float16), DDP and SyncBN, `torch.compile`
        (`device.prepare_model`), the float16 GradScaler and the EMA copy of the weights (`training.ema_decay`)."""
        self.model, self.device, self.dtype, self.channels_last = dev.prepare_model(self.model, self.local_rank,
                                                                                   self.world_size)
        self.scaler = dev.grad_scaler(self.device, self.dtype)
        self.ema: dict[str, torch.Tensor] | None = ema_copy(self.raw_model.state_dict()) if self.ema_decay else None

    loaders: Any = None  # a module with train_loader(distributed) and val_loader(distributed): an experiment's data.py

    def initialize_train_loader(self) -> None:
        """Set `self.train_loader` (any iterable of batches; FFCV loaders get `set_epoch` for exact resume).
        Default: `self.loaders.train_loader(distributed=world size > 1)`."""
        if self.loaders is None:
            raise NotImplementedError("set Trainer.loaders (the experiment's data.py) or override initialize_train_loader")
        self.train_loader = self.loaders.train_loader(distributed=self.world_size > 1)

    def initialize_val_loader(self) -> None:
        """Set `self.val_loader`. Default: `self.loaders.val_loader(distributed=world size > 1)`."""
        if self.loaders is None:
            raise NotImplementedError("set Trainer.loaders (the experiment's data.py) or override initialize_val_loader")
        self.val_loader = self.loaders.val_loader(distributed=self.world_size > 1)

    @param("optimizer.name")
    @param("optimizer.lr")
    @param("optimizer.momentum")
    @param("optimizer.weight_decay")
    @param("optimizer.nesterov")
    @param("optimizer.exclude_norm_bias")
    @param("optimizer.fused")
    def initialize_optimizer(self, name: str, lr: float, momentum: float, weight_decay: float, nesterov: bool,
                             exclude_norm_bias: bool, fused: bool) -> None:
        """Set `self.optimizer` over the model's parameters (the criterion's, if any, join in attach_criterion)."""
        groups = parameter_groups(self.raw_model, weight_decay, exclude_norm_bias)
        self.optimizer = build_optimizer(name, groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)

    @param("scheduler.name")
    @param("scheduler.warmup_epochs")
    @param("scheduler.step_size")
    @param("scheduler.milestones")
    @param("scheduler.gamma")
    @param("scheduler.min_lr")
    @param("scheduler.lr_peak_epoch")
    @param("training.epochs")
    def initialize_scheduler(self, name: str, warmup_epochs: float, step_size: int, milestones: list[int],
                             gamma: float, min_lr: float, lr_peak_epoch: int, epochs: int) -> None:
        """Set `self.scheduler` (or None). The loop steps StepLR/MultiStepLR per epoch, others per optimizer step."""
        self.scheduler = build_scheduler(name, self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=epochs,
                                         warmup_epochs=warmup_epochs, step_size=step_size, milestones=milestones,
                                         gamma=gamma, min_lr=min_lr, lr_peak_epoch=lr_peak_epoch)

    @param("model.load_from")
    @param("model.load_optimizer")
    @param("model.load_scheduler")
    @param("model.load_epoch")
    def load_checkpoint(self, load_from: str, load_optimizer: bool, load_scheduler: bool, load_epoch: bool) -> None:
        """Resume from `run_dir/checkpoints/last.pt` when it exists (everything, exactly), else start from
        `model.load_from` when given (the model, and optionally optimizer, scheduler and epoch). The file is read
        into `self.checkpoint_state`; its weights, EMA, position and RNGs are restored here, its criterion,
        optimizer and scheduler states by `__init__` once the criterion exists and joined the optimizer."""
        if self.checkpoint_path.exists():
            self.checkpoint_state = ckpt.read_checkpoint(self.checkpoint_path, self.raw_model)
            ckpt.restore_weights_and_position(self, self.checkpoint_state, resume=True)
            if self.is_main:
                print(f"resumed from {self.checkpoint_path} at epoch {self.epoch}, batch {self.start_batch}",
                      file=sys.stderr)
        elif load_from:
            keep = [key for key, wanted in (("optimizer", load_optimizer), ("scheduler", load_scheduler),
                                            ("epoch", load_epoch)) if wanted]
            self.checkpoint_state = ckpt.read_checkpoint(Path(load_from), self.raw_model, keep=tuple(keep))
            ckpt.restore_weights_and_position(self, self.checkpoint_state, resume=False)

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

    def attach_criterion(self) -> None:
        """After `initialize_criterion`: give the optimizer the criterion's learnable parameters (ArcFace,
        ProxyAnchor, ... have some; the scheduler is rebuilt to cover them)."""
        learnable = [p for p in self.criterion.parameters() if p.requires_grad] if isinstance(self.criterion, nn.Module) else []
        if learnable and self.optimizer is not None:
            self.optimizer.add_param_group({"params": learnable})
            if self.scheduler is not None:
                self.initialize_scheduler()

    @param("logging.log_every")
    @param("logging.progress")
    def initialize_logger(self, log_every: int, progress: bool) -> None:
        """Open `log.jsonl`, `arrays.h5` and the mirrors of `logging.backends` in the run folder and write
        `config.json` (rank 0 only). With `training.fast_dev_run` nothing is written."""
        self.log_every, self.show_progress = log_every, progress
        if self.is_main and not self.fast_dev_run:
            self.open_logs()
        self.steps_record = open_steps_record(self)  # steps.jsonl: batch hashes, losses, weights (torchstrap verify)

    # ------------------------------------------------------------------ hooks: training
    def before_train_epoch(self) -> None:
        """Called after `modules.train()`, before the first batch of an epoch."""
        if self.start_batch == 0:
            self.train_sums = new_sums("loss")

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
        """Add `self.loss` to the epoch's training loss (summed on the device); every `logging.log_every` steps
        read it back (the only host sync), log it and show it on the progress bar."""
        add_to_sums(self.train_sums, loss=self.loss)
        if self.log_every and self.step % self.log_every == 0:
            loss = float(self.loss)
            if self.world_size > 1:  # log the global batch's loss (every rank takes this branch together)
                loss = all_reduce_sums({"loss": loss}, self.device)["loss"] / self.world_size
            self.log({"kind": "train_step", "train_loss": loss, "lr": self.optimizer.param_groups[0]["lr"]})
            if self.progress_bar is not None:
                self.progress_bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def after_train_epoch(self) -> None:
        """Store the epoch's mean training loss (over all ranks) in `self.epoch_record` (logged after evaluation)."""
        self.epoch_record["train_loss"] = means(all_reduce_sums(self.train_sums, self.device))["loss"]
        self.epoch_record["lr"] = self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------ hooks: evaluation
    def before_eval_epoch(self) -> None:
        """Called after `modules.eval()`, before the first validation batch: empties `self.val_sums`."""
        self.val_sums = ClassificationSums()

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
            scores = class_scores(outputs, self.criterion)  # the criterion's log_prob when it holds the output layer
        self.val_sums.add(scores, targets, loss)

    def after_eval_step(self) -> None:
        """Called after each `eval_step`."""

    def after_eval_epoch(self) -> None:
        """val_loss, val_top1 and val_top5 over all ranks into `self.epoch_record`; the confusion matrix (rows:
        true class, columns: predicted class) into arrays.h5."""
        self.epoch_record.update(self.val_sums.metrics(self.device))
        confusion = self.val_sums.confusion_over_ranks()
        if confusion is not None:
            self.log_hdf5({"val_confusion": confusion})

    # ------------------------------------------------------------------ the loops
    def run(self) -> dict[str, Any]:
        """Train for `training.epochs` (or only evaluate with `training.eval_only`); returns the last epoch record.
        Closes the loggers at the end (`close()`), also when training raised. Ctrl-C and SIGTERM checkpoint and
        stop (signals.py); a full disk or memory that runs out end the run as failed, in one sentence (faults.py)."""
        try:
            with stop_on_signals(self), stop_on_faults(self):
                if self.eval_only:
                    self.epoch_record = {"kind": "eval"}
                    self.evaluate()
                    self.log(self.epoch_record)
                    record = self.epoch_record
                else:
                    record = self.train_all_epochs()
                self.end_run()  # arrays.h5 complete, the log's end line, curves.png
            return record
        finally:
            self.close()

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
            if not self.train_one_epoch(f"epoch {self.epoch}/{epochs - 1}"):
                return self.epoch_record  # stopped on request, checkpointed
            self.start_batch = 0
            if isinstance(self.scheduler, PER_EPOCH_SCHEDULERS):
                self.scheduler.step()
            self.after_train_epoch()
            doctor.after_first_epoch(self)  # where the time goes: doctor.json (logging.doctor)
            if eval_each_epoch and ((self.epoch + 1) % eval_every == 0 or self.epoch + 1 == epochs):
                self.evaluate()
            self.log(self.epoch_record)
            self.print_epoch(epochs)
            self.epoch += 1
            self.steps_record.epoch_end(self)
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
        limit = limited_len(self.train_loader, self.limit_train_batches)
        self.progress_bar = self.make_progress_bar(description, total=limit, initial=self.start_batch)
        batches = iter(epoch_batches(self.train_loader, self.epoch, self.start_batch))
        dev.reset_peak_memory(self.device)
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
            self.steps_record.batch(self)  # hashed while the batch is in the cache (the step reads it next)
            self.before_train_step()
            done = self.batch_index + 1   # the optimizer steps after every `accumulate` batches and the last one
            boundary = done % self.accumulate == 0 or done == limit
            with dev.no_sync(self.model, not boundary):
                loss = self.train_step()
                self.loss = self.checked_loss(loss)  # detached, left on the device
                self.backward(loss)
            if boundary:
                self.optimizer_step()
            if self.log_every and self.step % self.log_every == 0:
                self.check_losses()  # a NaN/inf loss since the last check stops here (training.stop_on_nan)
            self.after_train_step()
            self.steps_record.step(self)
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
        self.check_losses()
        self.close_progress_bar()
        if self.batch_index == 0:  # an iterable without a length that yields nothing: no step, never "finished"
            raise UserError(f"the training loader gave no batch in epoch {self.epoch}: nothing was trained "
                            f"(is the training set empty, or smaller than data.batch_size with drop_last?)")
        elapsed = max(time.perf_counter() - started, 1e-9)
        self.epoch_record.update(images_per_s=samples * self.world_size / elapsed, data_wait_share=waited / elapsed,
                                 peak_memory_mb=dev.peak_memory_mb(self.device))
        return True

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
            update_ema(self.ema, self.raw_model, self.ema_decay)

    @torch.no_grad()
    def evaluate(self) -> None:
        """One pass over `self.val_loader` (at most `training.limit_val_batches`) with the eval hooks, on the EMA
        weights when there are; results land in `self.epoch_record`."""
        with self.ema_weights():
            self.modules.eval()
            self.before_eval_epoch()
            total, limit = safe_len(self.val_loader), self.limit_val_batches
            self.progress_bar = self.make_progress_bar("eval", total=min(total, limit) if limit and total else total)
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
