"""The best epochs by a monitored value (`logging.monitor`, `monitor_mode`, `save_top_k`) and early stopping
(`training.patience`): `checkpoints/best.pt` is the best epoch's checkpoint, `epoch_<E>.pt` each of the top k."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .config import param
from .run_folder import best_checkpoint, copy_atomic, epoch_checkpoint

MONITOR_MODES = ("max", "min")   # the choices of logging.monitor_mode: a higher or a lower value is better


class BestCheckpoints:
    """The `k` best epochs by `monitor` in `mode` ("max" or "min"). `entries` ([value, epoch] pairs, best first)
    goes into last.pt; `patience` > 0 ends training after that many epochs without a better value."""

    def __init__(self, run_dir: Path, monitor: str, mode: str, k: int, patience: int = 0) -> None:
        self.run_dir, self.monitor, self.mode, self.k, self.patience = run_dir, monitor, mode, k, patience
        self.entries: list[list[float]] = []

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def add(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is among the top k (its checkpoint should be kept)."""
        if self.k <= 0 or not np.isfinite(value):
            return False
        ranked = sorted([*self.entries, [value, epoch]], key=lambda e: (-e[0] if self.mode == "max" else e[0], e[1]))
        kept, dropped = ranked[: self.k], ranked[self.k:]
        self.entries = kept
        for _, old_epoch in dropped:
            self.epoch_path(int(old_epoch)).unlink(missing_ok=True)
        return [value, epoch] in kept

    def track(self, record: dict, epoch: int) -> bool:
        """Rank a finished epoch by its monitored value in `record`; True when its checkpoint is among the best."""
        if self.monitor not in record:
            return False
        return self.add(float(record[self.monitor]), epoch)

    def epochs_since_best(self, epoch: int) -> int | None:
        """Epochs run since the best one (None before any)."""
        return epoch - int(self.entries[0][1]) if self.entries else None

    def out_of_patience(self, epoch: int, verbose: bool = False) -> bool:
        """Whether `patience` epochs ran since the best one by the end of `epoch` (training stops); `verbose`
        says so on stderr."""
        since = self.epochs_since_best(epoch) if self.patience else None
        if since is None or since < self.patience:
            return False
        if verbose:
            print(f"early stop: no better {self.monitor} for {since} epochs (training.patience {self.patience})",
                  file=sys.stderr)
        return True

    def epoch_path(self, epoch: int) -> Path:
        return epoch_checkpoint(self.run_dir, epoch)

    @property
    def best_path(self) -> Path:
        return best_checkpoint(self.run_dir)

    def keep(self, checkpoint: Path, epoch: int) -> None:
        """Copy the epoch's checkpoint to its top-k file (k > 1) and to best.pt when it is the best."""
        if self.k > 1:
            copy_atomic(checkpoint, self.epoch_path(epoch))
        if self.entries and int(self.entries[0][1]) == epoch:
            copy_atomic(checkpoint, self.best_path)


@param("logging.monitor")
@param("logging.monitor_mode")
@param("logging.save_top_k")
@param("training.patience")
def best_checkpoints(run_dir: Path, monitor: str, monitor_mode: str, save_top_k: int,
                     patience: int) -> BestCheckpoints | None:
    """The `BestCheckpoints` of the config for a run folder (None when `logging.monitor` is '')."""
    if patience and not monitor:
        raise ValueError(f"training.patience is {patience} but logging.monitor is empty: "
                         f"name the value to watch, e.g. --logging.monitor val_top1")
    return BestCheckpoints(run_dir, monitor, monitor_mode, save_top_k, patience) if monitor else None
