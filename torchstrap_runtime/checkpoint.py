"""Checkpoint files and RNG state: what an exact resume needs besides the Trainer's own fields.

`save_torch_atomic` never leaves a half-written file behind; `load_torch` loads with `weights_only=True`;
`read_checkpoint` reads last.pt or a `model.load_from` file and checks it fits the model;
`rng_state`/`set_rng_state` carry python, numpy, torch (and CUDA) RNGs in types `weights_only` accepts;
`truncate_run_logs` cuts the logs back to a checkpoint; `trainer_state` and the two restore steps below are
what a Trainer's checkpoint holds and how it is restored.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distributed import host_values
from .ema import ema_copy
from .errors import BadFileError, MissingFileError
from .loggers import HDF5Logger
from .run_folder import HDF5_FILE, LOG_FILE, atomic_write


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
    """`torch.save` through `run_folder.atomic_write` (a kill mid-write leaves the previous file whole)."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


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


def read_checkpoint(path: Path, model: torch.nn.Module, keep: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The checkpoint at `path`, checked against `model`. With `keep`, only the model's weights and the
    entries named in `keep` that the file has (a start from `model.load_from`: e.g. ("optimizer", "epoch"));
    without, everything (an exact resume)."""
    state = load_torch(path)
    check_model_fits(state, model, path)
    if keep is None:
        return state
    return {"model": state["model"], **{key: state[key] for key in keep if state.get(key) is not None}}


def truncate_run_logs(run_dir: Path, log_bytes: int, hdf5_rows: dict[str, int]) -> None:
    """Cut `log.jsonl` and `arrays.h5` back to where they were at the checkpoint (no duplicated rows)."""
    log = run_dir / LOG_FILE
    if log.exists() and log.stat().st_size > log_bytes:
        with open(log, "r+b") as f:
            f.truncate(log_bytes)
    if (run_dir / HDF5_FILE).exists():
        HDF5Logger(run_dir / HDF5_FILE).truncate_rows(hdf5_rows)


# ---------------------------------------------------------------------- a Trainer's state
# `trainer_state` writes what the two restore steps read back. The workflow builds the criterion after
# `load_checkpoint`, and the criterion's parameters join the optimizer then, so a checkpoint is restored in two
# steps: `restore_weights_and_position` in `load_checkpoint`, `restore_optimization_state` right after
# `attach_criterion`. A start from `model.load_from` goes through the same two steps with the parts it keeps.
def trainer_state(trainer: Any, batch: int) -> dict[str, Any]:
    """Everything an exact resume of `trainer` needs: weights (and their EMA), optimizer, scheduler, scaler,
    position, RNGs, criterion, the modules of `trainer.checkpointed`, the best epochs so far, and how far the logs had got (so a resumed run neither
    repeats nor loses rows). `batch` > 0: the batches of the epoch already done."""
    criterion = getattr(trainer, "criterion", None)
    return {
        "model": trainer.raw_model.state_dict(),
        "ema": trainer.ema,
        "optimizer": trainer.optimizer.state_dict() if trainer.optimizer is not None else None,
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.scaler.state_dict(),
        "criterion": criterion.state_dict() if isinstance(criterion, torch.nn.Module) else None,
        "modules": {name: module.state_dict() for name, module in getattr(trainer, "checkpointed", {}).items()},
        "epoch": trainer.epoch,
        "step": trainer.step,
        "batch": batch,
        "train_sums": host_values(trainer.train_sums) if hasattr(trainer, "train_sums") else {},
        "best": list(trainer.best.entries) if trainer.best is not None else [],
        "rng": rng_state(),
        "loader_seeds": trainer.train_loader.seed_state() if hasattr(trainer.train_loader, "seed_state") else None,
        "log_bytes": trainer.json_logger.tell() if trainer.json_logger is not None else 0,
        "hdf5_rows": trainer.hdf5_logger.row_counts() if trainer.hdf5_logger is not None else {},
    }


def restore_weights_and_position(trainer: Any, state: dict[str, Any], resume: bool) -> None:
    """The model, its EMA (a checkpoint without one starts it from its weights), the scaler and the epoch; with
    `resume` also the step and batch, running sums, best epochs, RNGs, loader seeds and log positions."""
    trainer.raw_model.load_state_dict(state["model"])
    if trainer.ema is not None:
        trainer.ema = ema_copy(state.get("ema") or trainer.raw_model.state_dict(), trainer.device)
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    if "epoch" in state:
        trainer.epoch = int(state["epoch"])
    if not resume:
        return
    trainer.step, trainer.start_batch = int(state["step"]), int(state["batch"])
    sums = dict(state.get("train_sums") or {})   # global sums: rank 0 holds them, the others restart at 0
    trainer.train_sums = sums if trainer.is_main else {key: 0.0 * value for key, value in sums.items()}
    if trainer.best is not None:
        trainer.best.entries = [list(entry) for entry in state.get("best") or []]
    set_rng_state(state["rng"])
    if state.get("loader_seeds") and hasattr(trainer.train_loader, "load_seed_state"):
        trainer.train_loader.load_seed_state(state["loader_seeds"])  # seeds drawn when they were None
    if trainer.is_main:
        truncate_run_logs(trainer.run_dir, state.get("log_bytes", 0), state.get("hdf5_rows") or {})


def restore_optimization_state(trainer: Any, state: dict[str, Any]) -> None:
    """The criterion, optimizer and scheduler states, and those of `trainer.checkpointed` (a dict of modules an
    experiment adds: a momentum teacher, a probe), for those `state` has and `trainer` has objects for."""
    criterion = getattr(trainer, "criterion", None)
    for name, module in getattr(trainer, "checkpointed", {}).items():
        if name in (state.get("modules") or {}):
            module.load_state_dict(state["modules"][name])
    if state.get("criterion") and isinstance(criterion, torch.nn.Module):
        criterion.load_state_dict(state["criterion"])
    if state.get("optimizer") and trainer.optimizer is not None:
        trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scheduler") and trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
