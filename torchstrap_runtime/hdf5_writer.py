"""The HDF5 side of `log_hdf5`: `HDF5Writer` appends rows to `arrays.h5`; run as a program, it does so in a
process of its own for `loggers.HDF5Logger`, so that h5py (which holds the GIL while it writes) never stalls
the training process. Imports numpy and h5py only.

Protocol of the writer process (`python -m torchstrap_runtime.hdf5_writer PATH COMMANDS REPLIES RING SIZE`,
the last four are inherited file descriptors and the ring's size in bytes):
- commands (pickled tuples): ("rows", step, epoch, [(key, dtype, shape, ring position or None), ...]), each
  None-positioned row followed by its bytes; ("sync",), ("counts",), ("truncate", {name: rows}), ("close",).
- the ring: a shared memory block, 8 bytes of "consumed up to" (a monotonic byte position the writer sets
  once it has written a row) then SIZE bytes of row data at positions modulo SIZE.
- replies: ("error", text) as soon as a write fails (the rows of that call are dropped, the next ones are
  written); ("synced",), ("counts", {name: rows}), ("truncated",), ("closed",).
End of the commands pipe (the training process is gone, even by SIGKILL): the rows received are written and
the file is closed. Termination signals are ignored: the training process decides when the writer stops.
"""
from __future__ import annotations

import mmap
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

WRITER_IGNORES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
RING_HEADER = 8  # bytes before the ring's data: the writer's "consumed up to" position (uint64)
LOCK_WAIT_SECONDS = 10.0  # how long opening waits for another process (a writer finishing) to release the file


def open_hdf5(path: str | Path, mode: str):
    """h5py.File(path, mode), waiting up to LOCK_WAIT_SECONDS while another process holds the file's lock
    (a killed run's writer still writing its last rows)."""
    import h5py

    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            return h5py.File(path, mode)
        except OSError as error:
            if "lock" not in str(error).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class HDF5Writer:
    """Appends rows to the resizable datasets of one HDF5 file (`<key>`, `<key>__step`, `<key>__epoch`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None
        # open datasets by name as (h5py dataset, row shape, a chunk per row?) and their row counts: asking
        # h5py for a dataset or its shape costs more than appending a row
        self._datasets: dict[str, tuple[Any, tuple, bool]] = {}
        self._lengths: dict[str, int] = {}

    def _open(self):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open_hdf5(self.path, "a")
        return self._file

    def _dataset(self, name: str, row: np.ndarray) -> tuple[Any, tuple, bool]:
        entry = self._datasets.get(name)
        if entry is None:
            f = self._open()
            if name not in f:
                # rows of 64 KiB and more get a chunk each (written whole, below); smaller rows share chunks
                rows = 1 if row.nbytes >= (1 << 16) else max(1, min(1024, (1 << 16) // max(1, row.nbytes)))
                f.create_dataset(name, shape=(0, *row.shape), maxshape=(None, *row.shape), dtype=row.dtype,
                                 chunks=(rows, *row.shape))
            dataset = f[name]
            shape = dataset.shape[1:]
            entry = self._datasets[name] = (dataset, shape, dataset.chunks[0] == 1 and bool(shape)
                                            and not dataset.compression)
            self._lengths[name] = dataset.shape[0]
        return entry

    def _append(self, name: str, rows: list[np.ndarray]) -> None:
        """Append rows (arrays of one shape) through h5py's low-level calls: the extent grows once, a row of a
        chunk of its own is written whole, smaller rows in one hyperslab (the high-level `resize` +
        `__setitem__` cost about twice as much, which matters when a 256x256 array is logged every step)."""
        from h5py import h5s

        dataset, shape, chunk_per_row = self._dataset(name, rows[0])
        for row in rows:
            if row.shape != shape:
                raise ValueError(f"log_hdf5: '{name}' rows have shape {shape}, got an array of shape {row.shape}")
        n, k = self._lengths[name], len(rows)
        dataset.id.set_extent((n + k, *shape))
        self._lengths[name] = n + k
        if chunk_per_row:  # each row is exactly one chunk
            for i, row in enumerate(rows):
                dataset.id.write_direct_chunk((n + i,) + (0,) * len(shape), np.ascontiguousarray(row, dataset.dtype))
            return
        data = np.ascontiguousarray(np.stack(rows), dtype=dataset.dtype)
        file_space = dataset.id.get_space()
        file_space.select_hyperslab((n,) + (0,) * len(shape), (k, *shape))
        dataset.id.write(h5s.create_simple((k, *shape)), file_space, data)

    def write(self, calls: list[tuple[list[tuple[str, np.ndarray]], int, int]]) -> None:
        """Append the rows of several `log()` calls, key by key in call order, then flush once."""
        by_key: dict[str, list[tuple[np.ndarray, int, int]]] = {}
        for rows, step, epoch in calls:
            for key, row in rows:
                by_key.setdefault(key, []).append((row, step, epoch))
        for key, entries in by_key.items():
            self._append(key, [row for row, _, _ in entries])
            self._append(f"{key}__step", [np.asarray(step, dtype=np.int64) for _, step, _ in entries])
            self._append(f"{key}__epoch", [np.asarray(epoch, dtype=np.int64) for _, _, epoch in entries])
        self._file.flush()

    def row_counts(self) -> dict[str, int]:
        """Rows of every dataset so far."""
        if self._file is None and not self.path.exists():
            return {}
        f = self._open()
        return {name: int(f[name].shape[0]) for name in f.keys()}

    def truncate_rows(self, counts: dict[str, int]) -> None:
        """Cut every dataset back to `counts[name]` rows (0 for datasets created after the counts were taken)."""
        f = self._open()
        for name in f.keys():
            keep = counts.get(name, 0)
            if f[name].shape[0] > keep:
                f[name].resize(keep, axis=0)
        self._datasets, self._lengths = {}, {}
        f.flush()

    def close(self) -> None:
        self._datasets, self._lengths = {}, {}
        if self._file is not None:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------------- the writer process
GROUP = 16  # at most this many queued calls are written together (one extent change per dataset, one flush)


def serve(path: str, commands: Connection, replies: Connection, ring: mmap.mmap, ring_size: int) -> None:
    """The writer process's loop (see the module docstring)."""
    writer = HDF5Writer(path)
    consumed = np.frombuffer(ring, dtype=np.uint64, count=1)
    data = np.frombuffer(ring, dtype=np.uint8, offset=RING_HEADER, count=ring_size)
    pending: list[tuple[list[tuple[str, np.ndarray]], int, int]] = []
    end = None  # ring position after the last pending row

    def write_pending() -> None:
        nonlocal end
        if pending:
            try:
                writer.write(pending)
            except Exception as error:  # noqa: BLE001 - reported to the training process, which raises it
                replies.send(("error", f"{type(error).__name__}: {error}"))
            pending.clear()
        if end is not None:
            consumed[0] = end  # after the write: the training process may now reuse those bytes
            end = None

    while True:
        try:
            message = commands.recv()
        except EOFError:  # the training process is gone: keep what it sent
            break
        kind = message[0]
        if kind == "rows":
            _, step, epoch, header = message
            rows = []
            for key, dtype, shape, start in header:
                dtype = np.dtype(dtype)
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if start is None:
                    row = np.frombuffer(commands.recv_bytes(), dtype=dtype).reshape(shape)
                else:
                    offset = start % ring_size
                    row = data[offset:offset + nbytes].view(dtype).reshape(shape)
                    end = start + nbytes
                rows.append((key, row))
            pending.append((rows, step, epoch))
            if len(pending) >= GROUP or not commands.poll():
                write_pending()
            continue
        write_pending()
        if kind == "sync":
            replies.send(("synced",))
        elif kind == "counts":
            replies.send(("counts", writer.row_counts()))
        elif kind == "truncate":
            writer.truncate_rows(message[1])
            replies.send(("truncated",))
        elif kind == "close":
            writer.close()
            replies.send(("closed",))
            return
    write_pending()
    writer.close()


def main(argv: list[str]) -> None:
    for number in WRITER_IGNORES:  # started with them blocked (see HDF5Logger._start)
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WRITER_IGNORES)
    path, commands_fd, replies_fd, ring_fd, ring_size = argv[0], *map(int, argv[1:5])
    ring = mmap.mmap(ring_fd, RING_HEADER + ring_size)
    serve(path, Connection(commands_fd, writable=False), Connection(replies_fd, readable=False), ring, ring_size)


if __name__ == "__main__":
    main(sys.argv[1:])
