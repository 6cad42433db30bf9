"""Checkpoint files and RNG state: what an exact resume needs besides the Trainer's own fields.

`save_torch_atomic` never leaves a half-written file behind; `load_torch` loads with `weights_only=True`;
`check_model_fits` turns weights of another architecture into one sentence;
`rng_state`/`set_rng_state` carry python, numpy, torch (and CUDA) RNGs in types `weights_only` accepts;
`truncate_run_logs` cuts the logs back to a checkpoint; `BestCheckpoints` keeps `best.pt` and the top-k.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import BadFileError, MissingFileError
from .loggers import HDF5_FILE, LOG_FILE, HDF5Logger


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
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
    """Restore what `rng_state()` returned."""
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


def copy_atomic(source: Path, path: Path) -> None:
    """Copy a file to a temporary name beside `path`, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def load_torch(path: Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; a missing or unreadable file is a clear error."""
    if not path.exists():
        raise MissingFileError(f"checkpoint {path} does not exist (expected a .pt file saved by a torchstrap run)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BadFileError(f"checkpoint {path} cannot be loaded: corrupt, truncated or not a torch checkpoint "
                           f"({type(error).__name__})") from error


def check_model_fits(state: dict[str, Any], model: torch.nn.Module, path: Path) -> None:
    """A BadFileError naming the file and the first keys or shapes that differ when the checkpoint's weights
    do not fit `model` (another architecture, or the model changed since the checkpoint was written)."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise BadFileError(f"checkpoint {path} has no model weights (expected a .pt file saved by a torchstrap run)")
    ours, theirs = model.state_dict(), state["model"]

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    shapes = [f"{k} {tuple(theirs[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in ours.items()
              if k in theirs and tuple(getattr(theirs[k], "shape", ())) != tuple(v.shape)]
    problems = [f"{label} {first(keys)}" for label, keys in (
        ("missing from the file:", [k for k in ours if k not in theirs]),
        ("not in the model:", [k for k in theirs if k not in ours]),
        ("other shapes:", shapes)) if keys]
    if problems:
        raise BadFileError(f"checkpoint {path} does not fit the model ({'; '.join(problems)}): it was saved from "
                           "another architecture, or the model changed since")


def truncate_run_logs(run_dir: Path, log_bytes: int, hdf5_rows: dict[str, int]) -> None:
    """Cut `log.jsonl` and `arrays.h5` back to where they were at the checkpoint (no duplicated rows)."""
    log = run_dir / LOG_FILE
    if log.exists() and log.stat().st_size > log_bytes:
        with open(log, "r+b") as f:
            f.truncate(log_bytes)
    if (run_dir / HDF5_FILE).exists():
        HDF5Logger(run_dir / HDF5_FILE).truncate_rows(hdf5_rows)


class BestCheckpoints:
    """The `k` best epochs by a monitored value: `best.pt` is the best one's checkpoint, and with k > 1
    `epoch_<E>.pt` each of the top k. `entries` ([value, epoch] pairs, best first) goes into last.pt."""

    def __init__(self, folder: Path, mode: str, k: int) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"logging.monitor_mode must be 'max' or 'min', got {mode!r}")
        self.folder, self.mode, self.k = folder, mode, k
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

    def epochs_since_best(self, epoch: int) -> int | None:
        """Epochs run since the best one (None before any)."""
        return epoch - int(self.entries[0][1]) if self.entries else None

    def epoch_path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch:04d}.pt"

    def keep(self, checkpoint: Path, epoch: int) -> None:
        """Copy the epoch's checkpoint to its top-k file (k > 1) and to best.pt when it is the best."""
        if self.k > 1:
            copy_atomic(checkpoint, self.epoch_path(epoch))
        if self.entries and int(self.entries[0][1]) == epoch:
            copy_atomic(checkpoint, self.folder / "best.pt")
