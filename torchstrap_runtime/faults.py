"""What a run does when the machine fails it: a disk that fills up, memory that runs out.

`stop_on_faults(trainer)` wraps `Trainer.run`. A write that failed for lack of space (a checkpoint, log.jsonl,
arrays.h5: `atomic_write` has removed its temporary file, the previous last.pt is whole, log.jsonl holds whole
lines) or an allocation the allocator refused (CPU or CUDA) ends the run: the log's end line says "failed"
(`torchstrap runs` shows it so), the loggers are closed, and a `UserError` says in one sentence what happened
(exit code 2): the folder, its free space and what the next checkpoint needs; the batch size that did not fit.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

import torch

from .errors import UserError
from .run_folder import DISK_FULL_ERRNOS, disk_full_sentence, free_bytes, last_checkpoint_size, megabytes


class DiskFullError(UserError, OSError):
    """A write into the run folder failed because its disk is full."""


class OutOfMemory(UserError, MemoryError):
    """A training or evaluation step asked for more memory than the device has."""


def chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and the errors it was raised from."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def checkpoint_bytes(trainer: Any) -> int:
    """What the next checkpoint needs: last.pt's size, or (before the first) the size of its serialized state."""
    size = last_checkpoint_size(trainer.run_dir)
    if size:
        return size

    class Counter:
        written = 0

        def write(self, data: bytes) -> int:
            self.written += len(data)
            return len(data)

        def flush(self) -> None:
            pass

    counter = Counter()
    with contextlib.suppress(Exception):
        torch.save(trainer.state_dict(), counter)
    return counter.written


def is_disk_full(error: BaseException, trainer: Any) -> bool:
    """Whether `error` is a write that failed for lack of space in the run folder: ENOSPC/EDQUOT (also inside
    h5py's message), or a failed write (torch.save says only "file write failed") with less space free than the
    next checkpoint needs."""
    for cause in chain(error):
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(cause) or "Disk quota exceeded" in str(cause):
            return True
    written = isinstance(error, OSError) or "write" in str(error) or "unexpected pos" in str(error)
    return written and free_bytes(trainer.run_dir) < checkpoint_bytes(trainer)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error)))


def out_of_memory_sentence(error: BaseException, trainer: Any) -> str:
    """The step, the batch size that did not fit, what the allocator refused, what to change."""
    from .batches import batch_size
    from .trainer_base import config_value

    evaluating = not trainer.model.training
    key = "data.val_batch_size" if evaluating else "data.batch_size"
    configured, given = config_value(key), batch_size(trainer.data) if trainer.data is not None else None
    size = given if given is not None else configured
    where = ("evaluation" if evaluating else "the first training step" if trainer.step == 0
             else f"training step {trainer.step}") + f" (epoch {trainer.epoch})"
    asked = re.search(r"allocate (\d+) bytes", str(error)) or re.search(r"allocate ([\d.]+ [KMGT]iB)", str(error))
    refused = ""
    if asked:
        refused = f" (the allocator refused {megabytes(int(asked.group(1))) if asked.group(1).isdigit() else asked.group(1)})"
    setting = f"{key} {configured}" if configured is not None else "the batch size"
    return (f"out of memory in {where} on {trainer.device} with batches of {size} samples ({setting}){refused}: "
            f"lower {key if configured is not None else 'the batch size'}"
            + ("" if evaluating else " (training.accumulate keeps the batch each optimizer step sees)"))


def end_failed(trainer: Any) -> None:
    """The log's end line says "failed"; the loggers close (errors of a full disk are dropped here)."""
    trainer.stop_reason = "failed"
    with contextlib.suppress(Exception):
        trainer.log({"kind": "end", "status": "failed"})
    with contextlib.suppress(Exception):
        trainer.close()


@contextlib.contextmanager
def stop_on_faults(trainer: Any) -> Iterator[None]:
    """While inside: a full disk or an out-of-memory error ends the run as failed with one sentence."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        if is_out_of_memory(error):
            sentence, kind = out_of_memory_sentence(error, trainer), OutOfMemory
        elif is_disk_full(error, trainer):
            sentence, kind = disk_full_sentence(trainer.run_dir, checkpoint_bytes(trainer)), DiskFullError
        else:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        end_failed(trainer)
        raise kind(sentence) from error
