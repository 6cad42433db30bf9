"""Run logs: scalars and text as JSON lines (`log.jsonl`), arrays as rows of HDF5 datasets (`arrays.h5`).

Both files survive a crash: every JSON line is written whole and flushed, and the HDF5 rows are written by a
process of their own (`hdf5_writer.py`) that finishes what it was sent and closes the file even when the
training process is killed. Read them back with `read_log(run_dir)` and `read_hdf5(run_dir)`.
"""

from __future__ import annotations

import atexit
import json
import math
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .hdf5_writer import RING_HEADER, WRITER_IGNORES, HDF5Writer, open_hdf5

LOG_FILE = "log.jsonl"
HDF5_FILE = "arrays.h5"


def _to_jsonable(value: Any) -> Any:
    """Tensors and numpy scalars become Python numbers/lists; NaN/inf become strings JSON can hold."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


class JSONLogger:
    """Appends one JSON object per `log()` call to `path`, flushed immediately (line-buffered)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._start = time.time()

    def log(self, values: dict[str, Any], **context: Any) -> None:
        record = {**context, "time": round(time.time() - self._start, 6), **_to_jsonable(values)}
        self._file.write(json.dumps(record) + "\n")

    def tell(self) -> int:
        """Bytes written so far (stored in checkpoints, so a resume can cut the log back to them)."""
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class HDF5Logger:
    """Each key becomes a resizable HDF5 dataset; each `log()` call appends one row per key.

    Beside every dataset `<key>` there is `<key>__step` and `<key>__epoch` with the step and epoch of
    each row. The file is flushed after every group of rows, so a killed run leaves an openable file.

    With `background=True` (the default) a writer process (`hdf5_writer.py`, started at the first call)
    appends the rows: `log()` copies the arrays into a shared memory ring and sends a short message, so the
    training process neither waits for HDF5 nor shares its GIL with h5py. The writer writes everything it
    was sent even when the training process is killed (SIGKILL included), then closes the file. An error in
    the writer is raised by a later call (`log`, `drain`, `row_counts`, `close`). `background=False` writes in
    the calling thread. The file is held by the writer until `close()` (the Trainer closes it at the end of
    `run()`): read it after that, or from another process once the run has ended.
    """

    RING_BYTES = 4 << 20  # shared memory for rows on their way to the writer; larger rows go through the pipe

    def __init__(self, path: str | Path, background: bool = True):
        self.path = Path(path)
        self.background = background
        self._local: HDF5Writer | None = None  # background=False
        self._process: subprocess.Popen | None = None
        self._commands: Connection | None = None
        self._replies: Connection | None = None
        self._ring: mmap.mmap | None = None
        self._produced = 0  # monotonic ring position after the last row sent

    # ------------------------------------------------------------------ logging
    def log(self, arrays: dict[str, Any], step: int = 0, epoch: int = 0) -> None:
        rows = [(key, host_array(value)) for key, value in arrays.items()]
        if not self.background:
            self._writer_here().write([([(key, np.array(row, copy=True)) for key, row in rows], step, epoch)])
            return
        if self._process is None:
            self._start()
        self._take_replies()
        header, through_pipe = [], []
        for key, row in rows:
            start = self._reserve(row.nbytes)
            if start is None:
                through_pipe.append(row)
            else:
                offset = RING_HEADER + start % self.RING_BYTES
                destination = np.frombuffer(self._ring, dtype=row.dtype, count=row.size, offset=offset)
                np.copyto(destination.reshape(row.shape), row)  # the copy: the caller may change the array later
            header.append((key, row.dtype.str, row.shape, start))
        self._send(("rows", int(step), int(epoch), header), through_pipe)

    def _reserve(self, nbytes: int) -> int | None:
        """Ring position for a row of `nbytes` (waiting while the writer still needs that space), or None."""
        size = self.RING_BYTES
        if nbytes > size // 4:
            return None
        if self._produced % size + nbytes > size:  # no row wraps around: start again at the beginning
            self._produced += size - self._produced % size
        start = self._produced
        consumed = np.frombuffer(self._ring, dtype=np.uint64, count=1)
        while start + nbytes - int(consumed[0]) > size:
            self._take_replies()
            if self._process.poll() is not None:
                raise RuntimeError(f"log_hdf5: the writer process of {self.path} exited "
                                   f"(code {self._process.returncode})")
            time.sleep(0.0005)
        self._produced = start + -(-nbytes // 64) * 64  # rows start 64-byte aligned
        return start

    def _start(self) -> None:
        """Start the writer process, with the command and reply pipes and the ring as inherited descriptors."""
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        ring_fd = (os.memfd_create("torchstrap-hdf5-ring") if hasattr(os, "memfd_create")
                   else os.dup(tempfile.TemporaryFile().fileno()))
        os.ftruncate(ring_fd, RING_HEADER + self.RING_BYTES)
        self._ring = mmap.mmap(ring_fd, RING_HEADER + self.RING_BYTES)
        self._produced = 0
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                            if p)}
        fds = (commands_read, replies_write, ring_fd)
        # the writer starts with termination signals blocked (it ignores them once running): a SLURM preemption
        # warning sent to every process of the job must not kill it while Python starts
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, WRITER_IGNORES)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "torchstrap_runtime.hdf5_writer", str(self.path), *map(str, fds),
                 str(self.RING_BYTES)], pass_fds=fds, stdin=subprocess.DEVNULL, env=env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            for fd in fds:
                os.close(fd)
        self._commands = Connection(commands_write, readable=False)
        self._replies = Connection(replies_read, writable=False)
        atexit.register(self.close)

    def _send(self, message: tuple, payloads: Iterable[np.ndarray] = ()) -> None:
        try:
            self._commands.send(message)
            for payload in payloads:
                self._commands.send_bytes(np.ascontiguousarray(payload))
        except OSError as error:  # BrokenPipeError: the writer died
            code = self._process.poll()
            self._take_replies()
            raise RuntimeError(f"log_hdf5: the writer process of {self.path} is gone (exit code {code})") from error

    def _take_replies(self, until: str | None = None) -> tuple | None:
        """Read the writer's replies: raise its first error; return the reply of kind `until` (waiting for it)."""
        error = None
        while until is not None or self._replies.poll():
            try:
                reply = self._replies.recv()
            except EOFError:
                raise RuntimeError(f"log_hdf5: the writer process of {self.path} is gone "
                                   f"(exit code {self._process.wait()})") from None
            if reply[0] == "error":
                error = error or reply[1]
            elif reply[0] == until:
                until = reply
                break
        if error is not None:
            raise RuntimeError(f"log_hdf5 could not write {self.path}: {error}")
        return until if isinstance(until, tuple) else None

    def _request(self, message: tuple, reply: str) -> tuple:
        if self._process is None:
            self._start()
        self._send(message)
        return self._take_replies(until=reply)

    # ------------------------------------------------------------------ the file
    def drain(self) -> None:
        """Wait until every row logged so far is in the file (and raise the writer's error, if any)."""
        if self._process is not None:
            self._request(("sync",), "synced")

    def row_counts(self) -> dict[str, int]:
        """Rows of every dataset so far (stored in checkpoints, so a resume can cut back to them)."""
        if not self.background:
            return self._writer_here().row_counts()
        return self._request(("counts",), "counts")[1]

    def truncate_rows(self, counts: dict[str, int]) -> None:
        """Cut every dataset back to `counts[name]` rows (0 for datasets created after the checkpoint)."""
        if not self.background:
            self._writer_here().truncate_rows(counts)
            return
        self._request(("truncate", counts), "truncated")

    def _writer_here(self) -> HDF5Writer:
        """The writer of `background=False`, in this process."""
        if self._local is None:
            self._local = HDF5Writer(self.path)
        return self._local

    def close(self) -> None:
        """Write what is pending and close the file (the writer process exits); a later `log()` reopens it."""
        if self._local is not None:
            self._local.close()
            self._local = None
        if self._process is None:
            return
        atexit.unregister(self.close)
        try:
            self._request(("close",), "closed")
        finally:
            process, self._process = self._process, None
            for connection in (self._commands, self._replies):
                connection.close()
            try:
                self._ring.close()
            except BufferError:  # an array still views it (an error's traceback): freed with that array
                pass
            process.wait()


def host_array(value: Any) -> np.ndarray:
    """`value` as a contiguous numpy array on the host (a tensor is detached and moved to the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def read_log_lines(path: str | Path) -> list[dict[str, Any]]:
    """Every complete JSON line of a `log.jsonl` file (a line cut by a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the last line of a killed run may be partial
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `<run_dir>/log.jsonl`, in order. Filter them by key, e.g. `[r for r in rows if 'val_top1' in r]`."""
    run_dir = Path(run_dir)
    path = run_dir / LOG_FILE if run_dir.is_dir() else run_dir
    return read_log_lines(path)


def read_hdf5(run_dir: str | Path, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of `<run_dir>/arrays.h5` as `{key: array of shape (rows, ...)}`, with `key__step`/`key__epoch`."""
    run_dir = Path(run_dir)
    path = run_dir / HDF5_FILE if run_dir.is_dir() else run_dir
    with open_hdf5(path, "r") as f:
        names = list(f.keys()) if keys is None else [n for k in keys for n in (k, f"{k}__step", f"{k}__epoch")]
        return {name: f[name][:] for name in names}
