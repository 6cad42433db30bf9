"""What a Trainer offers besides its workflow: the helpers its hooks call and the run's plumbing.

`Trainer` (trainer.py) subclasses `TrainerBase`; read trainer.py first. Here:
- what the hooks call: `to_device`, `autocast`, `raw_model`, `modules`, `ema_weights`, `log`, `log_hdf5`, ...;
- the loop's checks: a loss that is not a finite tensor, stop requests, best epochs and patience (best.py);
- checkpoints: `state_dict`, `load_state_dict`, `save_checkpoint` (what a checkpoint holds and how it is
  restored: checkpoint.py);
- the run folder: `make_run_dir`, the logs, progress bars and printing, `end_run`, `close`.
The attributes these read are set by `Trainer.__init__` and the hooks it calls.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from . import device as dev
from .batches import limited_len, safe_len
from .config import ConfigError, get_value, param
from .errors import UserError
from .distributed import all_reduce_sums, any_rank, broadcast_object
from .ema import swapped_in
from .loggers import HDF5Logger, JSONLogger
from .mirrors import Mirrors, open_mirrors
from .progress import print_epoch_line, print_run_summary, progress_bar
from .provenance import config_changes, new_run_id, record_config_changes, run_record, write_requirements
from .run_folder import (CONFIG_FILE, HDF5_FILE, LOG_FILE, RunLock, create_run_folder, last_checkpoint, run_path,
                         start_logs_over, write_json_atomic)
from .step_losses import StepLosses
from .steps_record import NO_RECORD, StepsRecord


def config_value(key: str):
    """The value of `key`, or None when the experiment declares no such key."""
    try:
        return get_value(key)
    except ConfigError:
        return None


class NonFiniteLoss(RuntimeError):
    """The training loss was NaN or infinite (`training.stop_on_nan`)."""


class TrainerBase:
    """The helpers and plumbing of `Trainer` (see the module docstring)."""

    stop_requested = False
    stop_reason: str | None = None          # "preempted", "stopped early", ... (the log's end line)
    json_logger: JSONLogger | None = None   # log.jsonl, arrays.h5 and the mirrors: opened by initialize_logger
    hdf5_logger: HDF5Logger | None = None
    mirrors: Mirrors | None = None
    progress_bar = None
    run_lock: RunLock | None = None
    steps_record: StepsRecord = NO_RECORD   # steps.jsonl (steps_record.py): opened by initialize_logger
    config_changes: dict[str, list] = {}    # values a resumed run changed from its config.json (make_run_dir)
    completed = False                       # run() returned without a stop request (the mirrors' end state)
    step_losses: StepLosses | None = None   # the losses of the steps since the last check_losses, on the device

    # ------------------------------------------------------------------ what the hooks call
    def to_device(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """`(inputs, targets)` of a batch on `self.device`; targets flattened to shape (N,). Host tensors reach
        a GPU by non-blocking copies from page-locked memory (`training.pin_memory`)."""
        return dev.inputs_and_targets(batch, self.device, self.channels_last, self.pin_memory)

    @functools.cached_property
    def pin_memory(self) -> bool:
        """`training.pin_memory` (False when the experiment does not declare it)."""
        return bool(config_value("training.pin_memory"))

    def autocast(self) -> contextlib.AbstractContextManager:
        """`torch.autocast` to `training.dtype` when it is bfloat16/float16, else a no-op context."""
        return dev.autocast(self.device, self.dtype)

    @property
    def raw_model(self) -> nn.Module:
        """`self.model` without its `torch.compile` and DistributedDataParallel wrappers."""
        return dev.unwrap(self.model)

    @property
    def modules(self) -> nn.ModuleDict:
        """What `train()`/`eval()` toggle: the model, and the criterion when it is a module."""
        modules = nn.ModuleDict({"model": self.model})
        if isinstance(getattr(self, "criterion", None), nn.Module):
            modules["criterion"] = self.criterion
        return modules

    def ema_weights(self) -> contextlib.AbstractContextManager:
        """Inside: the model holds the EMA weights (when `training.ema_decay` is set); restored bitwise after."""
        return swapped_in(self.raw_model, self.ema)

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

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: training batches / `training.accumulate`, rounded up."""
        return -(-(limited_len(self.train_loader, self.limit_train_batches) or 1) // self.accumulate)

    def request_stop(self, reason: str = "preempted") -> None:
        """Ask the loop to checkpoint after the current optimizer step and return (SLURM requeue, preemption;
        an early-stopping hook passes reason="stopped early", which `torchstrap runs` shows)."""
        self.stop_requested = True
        self.stop_reason = reason

    # ------------------------------------------------------------------ the loop's checks
    def checked_loss(self, loss: Any) -> torch.Tensor:
        """What `train_step` returned, detached, once it is known to be a tensor. With `training.stop_on_nan` it
        is kept on its device (`step_losses`) until `check_losses` reads it: no host sync per step."""
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"{type(self).__name__}.train_step returned {type(loss).__name__}, not the loss: it must "
                            f"end with `return loss` or `return super().train_step()` (the loop does backward and "
                            f"the optimizer step)")
        loss = loss.detach()
        if self.stop_on_nan:
            if self.step_losses is None:
                self.step_losses = StepLosses()
            self.step_losses.add(self.step, loss)
        return loss

    def check_losses(self) -> None:
        """Read the losses kept since the last check back from the device (one host sync; the loop calls it at log
        points, checkpoints and epoch ends, on every rank) and stop the run at the first NaN/inf one, naming its
        epoch and step (`training.stop_on_nan`)."""
        if self.step_losses is None or not self.stop_on_nan:
            return
        bad = self.step_losses.first_non_finite(self.device)
        if bad is not None:
            self.close_progress_bar()
            kept = f"{self.checkpoint_path} holds the last good checkpoint" if self.checkpoint_path.exists() \
                else "no checkpoint was written yet"
            raise NonFiniteLoss(f"the training loss is {bad[1]} at epoch {self.epoch}, step {bad[0]}: "
                                f"the run stopped and {kept} (lower optimizer.lr, set training.grad_clip, or "
                                f"set training.stop_on_nan false to go on)")

    def should_stop(self) -> bool:
        """Whether a stop was requested; with several ranks, on any of them (so all stop after the same step)."""
        if self.world_size > 1:
            self.stop_requested = any_rank(self.stop_requested, self.device)
        return self.stop_requested

    def track_best(self) -> bool:
        """Rank the finished epoch by its monitored value; True when its checkpoint is among the best."""
        return self.best is not None and not self.fast_dev_run and self.best.track(self.epoch_record, self.epoch - 1)

    def out_of_patience(self) -> bool:
        """`training.patience` epochs ran since the best monitored value (early stopping)."""
        if self.best is None or not self.best.out_of_patience(self.epoch - 1, self.is_main and self.show_progress):
            return False
        self.stop_reason = "stopped early"
        return True

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        """`run_dir/checkpoints/last.pt`: what a run resumes from."""
        return last_checkpoint(self.run_dir)

    def state_dict(self, batch: int = 0) -> dict[str, Any]:
        """Everything an exact resume needs (`checkpoint.trainer_state`); `batch` > 0 marks a mid-epoch state."""
        return ckpt.trainer_state(self, batch)

    def load_state_dict(self, state: dict[str, Any], resume: bool = True) -> None:
        """Restore a `state_dict()` into a built Trainer: the two steps `__init__` runs around the criterion."""
        ckpt.restore_weights_and_position(self, state, resume)
        ckpt.restore_optimization_state(self, state)

    def save_checkpoint(self, batch_done: int = 0) -> None:
        """Write `run_dir/checkpoints/last.pt` atomically (rank 0). `batch_done` > 0 marks a mid-epoch checkpoint.
        Nothing with `training.fast_dev_run`.

        Called on every rank: with several, the epoch's running sums are summed over ranks into the checkpoint."""
        self.check_losses()  # a checkpoint never holds weights that a non-finite loss reached
        if self.fast_dev_run:
            return
        sums = getattr(self, "train_sums", {})
        if sums:
            sums = all_reduce_sums(sums, self.device)
        self.steps_record.flush()
        if self.is_main:
            state = self.state_dict(batch=batch_done)
            state["train_sums"] = dict(sums)
            ckpt.save_torch_atomic(state, self.checkpoint_path)

    # ------------------------------------------------------------------ the run folder: logs, progress, the end
    @param("logging.folder")
    @param("logging.run_id")
    @param("training.resume_changed")
    def make_run_dir(self, folder: str, run_id: str, resume_changed: bool) -> Path:
        """`<logging.folder>/<logging.run_id>/` (a fresh id is generated when none is given), locked by rank 0.
        A run that resumes is compared with its config.json (`provenance.config_changes`)."""
        if not run_id:
            run_id = broadcast_object(new_run_id())  # every rank must agree on the generated id
        run_dir = run_path(folder, run_id)
        if self.is_main:
            self.run_lock = create_run_folder(run_dir)  # a second process on this run is refused
        try:
            self.config_changes = config_changes(run_dir, resume_changed)
        except BaseException:
            if self.run_lock is not None:
                self.run_lock.release()
            raise
        return run_dir

    def open_logs(self) -> None:
        """Open log.jsonl, arrays.h5 and the mirrors (a resumed run continues their runs from `self.step`); write
        config.json when the run folder has none. Training without a checkpoint starts the logs over."""
        if not self.eval_only and not self.checkpoint_path.exists() and start_logs_over(self.run_dir):
            print(f"no checkpoint in {self.run_dir}: starting over, the logs of the earlier attempt are emptied "
                  f"({LOG_FILE}, {HDF5_FILE})", file=sys.stderr)
        self.json_logger = JSONLogger(self.run_dir / LOG_FILE)
        self.hdf5_logger = HDF5Logger(self.run_dir / HDF5_FILE)
        if not (self.run_dir / CONFIG_FILE).exists():
            write_json_atomic(self.run_dir / CONFIG_FILE, run_record(type(self), self.train_loader, self.world_size))
            write_requirements(self.run_dir)
        self.mirrors = open_mirrors(self.run_dir, self.step if self.checkpoint_path.exists() else None)
        if self.config_changes and not self.eval_only:  # evaluating a run leaves its record as it trained
            record_config_changes(self.run_dir, self.config_changes, self.epoch, self.step)
            self.log({"kind": "config_change", "changed": self.config_changes})
            print("resuming with changed values: " + ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new)
                                                               in self.config_changes.items()), file=sys.stderr)

    # ------------------------------------------------------------------ what the loaders give
    @property
    def train_set_size(self) -> int | None:
        """Samples in the training set (a torchstrap/FFCV Loader's indices, a DataLoader's dataset), or None."""
        loader = self.train_loader
        for sized in (getattr(loader, "indices", None), getattr(loader, "dataset", None)):
            if sized is not None and safe_len(sized) is not None:
                return len(sized)
        return None

    def check_loaders(self) -> None:
        """Before training: refuse a training loader with no batch per epoch (a batch larger than the training
        set with drop_last), and a dataset that does not fit the model (`data.check_fits_model`: image size,
        label range; torchstrap/FFCV Loaders only)."""
        if self.train_loader is not None and limited_len(self.train_loader, self.limit_train_batches) == 0:
            size, batch = self.train_set_size, getattr(self.train_loader, "batch_size", None)
            name = getattr(self.train_loader, "fname", None)
            where = f"the training set{f' {name}' if name else ''}"
            if size == 0:
                raise UserError(f"{where} has no samples: there is nothing to train on")
            if size is None or batch is None:
                raise UserError("the training loader has no batch: there is nothing to train on")
            per_rank = size // self.world_size
            shown = f"{size} samples" + (f" ({per_rank} per process)" if self.world_size > 1 else "")
            most = f"; set data.batch_size to at most {per_rank}" if per_rank else ""
            raise UserError(f"{where} has {shown}, fewer than data.batch_size {batch}: with drop_last every epoch "
                            f"would have no training step{most}")
        image_size, num_classes = config_value("data.image_size"), config_value("model.num_classes")
        for loader in (self.train_loader, getattr(self, "val_loader", None)):
            if hasattr(loader, "reader") and hasattr(loader, "pipeline_specs"):
                from .data.writers import check_fits_model

                check_fits_model(loader, image_size, num_classes)

    def make_progress_bar(self, description: str, total: int | None = None, initial: int = 0):
        """A tqdm bar on rank 0 when `logging.progress` is on, else None."""
        return progress_bar(description, total, initial) if self.show_progress and self.is_main else None

    def close_progress_bar(self) -> None:
        if self.progress_bar is not None:
            self.progress_bar.close()
        self.progress_bar = None

    def print_epoch(self, epochs: int) -> None:
        """One line per epoch under the progress bars (rank 0, `logging.progress`): losses, accuracies, speed."""
        if self.is_main and self.show_progress:
            print_epoch_line(self.epoch_record, self.epoch, epochs)

    def print_summary(self, record: dict[str, Any]) -> None:
        """Print the final metrics, the best epoch and where the run folder is."""
        best = None
        if self.best is not None and self.best.entries:
            best = (self.best.monitor, *self.best.entries[0], self.best.best_path)
        print_run_summary(record, self.epoch, self.run_dir, best)

    def end_run(self) -> None:
        """After training returned: every logged array is in arrays.h5, the log's last line says how the run
        ended (for `torchstrap runs`; cut from the log again on resume), and a finished run gets curves.png."""
        if self.hdf5_logger is not None:
            self.hdf5_logger.drain()
        self.log({"kind": "end", "status": self.stop_reason or ("preempted" if self.stop_requested else "finished")})
        self.completed = not self.stop_requested
        if self.is_main and not self.stop_requested and not self.eval_only and not self.fast_dev_run:
            from .plots import plot_curves

            plot_curves(self.run_dir)

    def close(self) -> None:
        """Close the progress bar and the loggers (flushing arrays.h5), release the run folder's lock.
        Safe to call more than once."""
        self.close_progress_bar()
        for logger in (self.json_logger, self.hdf5_logger):
            if logger is not None:
                logger.close()
        self.json_logger = self.hdf5_logger = None
        self.steps_record.close()
        if self.mirrors is not None:
            self.mirrors.close(finished=self.completed)
            self.mirrors = None
        if self.run_lock is not None:
            self.run_lock.release()
