"""The steps record of a run (`steps.jsonl` in the run folder): per training step the hash of its batch and its
loss, per epoch the hash of the weights; what `torchstrap verify` re-runs and compares (verify.py).

    {"step": 0, "epoch": 0, "batch": 0, "data": "9f3a...", "loss": 2.3025}      one line per step
    {"epoch_end": 0, "step": 23, "weights": "51c0..."}                           one line per epoch

Hashes are xxh3-64 over the raw bytes of every tensor of the batch (tens of microseconds for a batch of a few
MB) or of the model's state dict. A resumed run drops the lines after its checkpoint, so the record always
reads like an uninterrupted run's.

In the re-runs `torchstrap verify` starts (`replay` set by verify.py's worker), every rank records, and each
step line also holds its samples: their dataset indices and one hash per sample (its row of every tensor of
the batch); the re-run stops after `replay.steps` steps (recording the weights' hash) or kills itself after
`replay.kill_after` steps, as a crash would.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import xxhash

from .run_folder import steps_file, write_text_atomic


@dataclass
class Replay:
    """What a `torchstrap verify` re-run records and when it ends."""

    steps: int                    # stop (with a checkpoint) once this many steps are done
    kill_after: int | None = None  # SIGKILL this process once this many steps are done


replay: Replay | None = None  # set in the processes `torchstrap verify` starts


# ---------------------------------------------------------------------- hashes
def leaf_tensors(value: Any) -> Iterator[torch.Tensor | np.ndarray]:
    """The tensors and arrays of a batch (a tensor, or lists, tuples and dicts of them), in order."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from leaf_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from leaf_tensors(item)


def host_bytes(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor as a contiguous array on the CPU (a copy only when it is on a device or not contiguous)."""
    if isinstance(tensor, torch.Tensor):
        if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.dtype == torch.bfloat16:
            tensor = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # numpy has no bfloat16
        return tensor.detach().numpy()
    return np.ascontiguousarray(tensor)


def data_hash(batch: Any) -> str:
    """Hash of the bytes of every tensor of a batch."""
    digest = xxhash.xxh3_64()
    for tensor in leaf_tensors(batch):
        digest.update(host_bytes(tensor))
    return digest.hexdigest()


def sample_hashes(batch: Any) -> list[str]:
    """One hash per sample of a batch: its row of every tensor whose first dimension is the batch's."""
    tensors = list(leaf_tensors(batch))
    if not tensors or not tensors[0].shape:
        return []
    rows = tensors[0].shape[0]
    per_sample = [host_bytes(t).reshape(rows, -1).view(np.uint8) for t in tensors if t.shape and t.shape[0] == rows]
    return [xxhash.xxh3_64_hexdigest(b"".join(part[i].tobytes() for part in per_sample)) for i in range(rows)]


def weights_hash(module: torch.nn.Module) -> str:
    """Hash of a module's state dict (names and bytes, in order)."""
    digest = xxhash.xxh3_64()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(host_bytes(tensor))
    return digest.hexdigest()


def batch_indices(loader: Any, epoch: int, batch: int, rows: int) -> list[int]:
    """Dataset indices of batch `batch` of `epoch` (a seeded Loader's order), else their positions in the epoch."""
    start = batch * getattr(loader, "batch_size", rows)
    if hasattr(loader, "epoch_order"):
        return [int(i) for i in loader.epoch_order(epoch)[start:start + rows]]
    return list(range(start, start + rows))


# ---------------------------------------------------------------------- the record
class StepsRecord:
    """Appends a run's steps record (rank 0; every rank in a verify re-run). `NO_RECORD` records nothing."""

    def __init__(self, path: Path | None, resume_step: int = 0, resume_epoch: int = 0):
        self.file = None
        self.data: str | None = ""  # the current batch's hash
        self.pending: list[dict[str, Any]] = []  # steps whose loss is still a device tensor (read at flush)
        if path is None:
            return
        if resume_step or resume_epoch:
            keep_until(path, resume_step, resume_epoch)
        # a verify re-run may be killed on purpose: line-buffered; a run writes at checkpoints and at the end
        self.file = open(path, "a", buffering=1 if replay is not None else -1, encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.write_pending()
        self.file.write(json.dumps(record) + "\n")

    def write_pending(self) -> None:
        """The steps kept since the last write, their losses read back now (one host read, not one per step)."""
        for pending in self.pending:
            self.file.write(json.dumps({**pending, "loss": float(pending["loss"].float())}) + "\n")
        self.pending.clear()

    def batch(self, trainer: Any) -> None:
        """When a training batch arrived: its hash. A batch already on a device is hashed only in verify's re-runs
        (reading it back would stall every step); a run's own record then holds `data: null`."""
        if self.file is not None:
            on_host = all(not isinstance(t, torch.Tensor) or t.device.type == "cpu" for t in leaf_tensors(trainer.data))
            self.data = data_hash(trainer.data) if on_host or replay is not None else None

    def step(self, trainer: Any) -> None:
        """After a training step's hooks (`trainer.step` not yet advanced)."""
        if self.file is None or (replay is not None and trainer.step >= replay.steps):
            return
        record = {"step": trainer.step, "epoch": trainer.epoch, "batch": trainer.batch_index, "data": self.data,
                  "loss": trainer.loss.detach()}
        done = trainer.step + 1
        if replay is None:   # written at the next checkpoint, epoch end or close
            self.pending.append(record)
            return
        record["loss"] = float(record["loss"].float())
        record["samples"] = sample_hashes(trainer.data)
        record["indices"] = batch_indices(trainer.train_loader, trainer.epoch, trainer.batch_index,
                                          len(record["samples"]))
        if done == replay.steps:
            record["weights"] = weights_hash(trainer.raw_model)
            trainer.request_stop("verified steps done")
        self.write(record)
        if replay.kill_after == done:
            self.file.close()
            os.kill(os.getpid(), signal.SIGKILL)

    def epoch_end(self, trainer: Any) -> None:
        """After an epoch (`trainer.epoch` already advanced): the weights' hash."""
        if self.file is not None:
            self.write({"epoch_end": trainer.epoch - 1, "step": trainer.step, "weights": weights_hash(trainer.raw_model)})

    def flush(self) -> None:
        """Before a checkpoint: every step it holds is on disk."""
        if self.file is not None:
            self.write_pending()
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.flush()
            self.file.close()
            self.file = None


NO_RECORD = StepsRecord(None)


def open_steps_record(trainer: Any) -> StepsRecord:
    """The record of `trainer`'s run: rank 0's steps.jsonl (every rank's own file in a verify re-run); none with
    `training.fast_dev_run`. A resumed run keeps only the lines before its checkpoint."""
    if trainer.fast_dev_run or trainer.eval_only or not (trainer.is_main or replay is not None):
        return NO_RECORD
    return StepsRecord(steps_file(trainer.run_dir, trainer.rank), trainer.step, trainer.epoch)


def keep_until(path: Path, step: int, epoch: int) -> None:
    """Drop the lines of steps `step` on and of epochs `epoch` on (a resumed run redoes them)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.endswith("\n") and before(json.loads(line), step, epoch)]
    write_text_atomic(path, "".join(kept))


def before(record: dict[str, Any], step: int, epoch: int) -> bool:
    if "epoch_end" in record:
        return record["epoch_end"] < epoch
    return record["step"] < step


def read_steps(path: Path) -> tuple[dict[int, dict], dict[int, str]]:
    """`({step: record}, {epoch: weights hash})` of a steps record (a last line cut by a crash is skipped)."""
    steps: dict[int, dict] = {}
    epochs: dict[int, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "epoch_end" in record:
            epochs[record["epoch_end"]] = record["weights"]
        else:
            steps[record["step"]] = record
    return steps, epochs
