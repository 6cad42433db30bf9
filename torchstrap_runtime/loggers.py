"""Run logs: scalars and text as JSON lines (`log.jsonl`), arrays as rows of HDF5 datasets (`arrays.h5`).

Both files survive a crash: every JSON line is written whole and flushed, and the HDF5 file is flushed
after each row, so a killed run leaves complete lines and an openable file. Read them back with
`read_log(run_dir)` and `read_hdf5(run_dir)`.
"""

from __future__ import annotations

import atexit
import json
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .run_folder import HDF5_FILE, LOG_FILE, atomic_write


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
    """Appends one JSON object per `log()` call to `path`, written to the file at once (unbuffered); a line
    whose write fails (a full disk) is cut off again, so the file holds whole lines only.

    Each line's `time` is the run's wall time in seconds: a resumed run continues from the last line's time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._start = time.time() - last_logged_time(self.path)
        self._file = open(self.path, "ab", buffering=0)

    def log(self, values: dict[str, Any], **context: Any) -> dict[str, Any]:
        """Write one line; returns the record written (for the log's mirrors)."""
        record = {**context, "time": round(time.time() - self._start, 6), **_to_jsonable(values)}
        line, start = (json.dumps(record) + "\n").encode("utf-8"), self._file.tell()
        try:
            written = 0
            while written < len(line):
                written += self._file.write(line[written:])
        except OSError:
            self._file.truncate(start)
            raise
        return record

    def tell(self) -> int:
        """Bytes written so far (stored in checkpoints, so a resume can cut the log back to them)."""
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class HDF5Logger:
    """Each key becomes a resizable HDF5 dataset; each `log()` call appends one row per key.

    Beside every dataset `<key>` there is `<key>__step` and `<key>__epoch` with the step and epoch of
    each row. The file is opened lazily (h5py is imported only when arrays are logged) and flushed
    after every row, so a killed run leaves an openable file.

    With `background=True` (the default) `log()` copies the arrays and a writer thread appends them, so
    the training loop does not wait for HDF5; `drain()` (called by `row_counts`, `truncate_rows`, `close`
    and at interpreter exit) waits until every queued row is written. A run killed with SIGKILL can lose
    the rows still queued (at most `queue_size` calls); an error in the writer is raised by the next call.
    """

    def __init__(self, path: str | Path, background: bool = True, queue_size: int = 8):
        self.path = Path(path)
        self._file = None
        # open datasets by name as (h5py dataset, row shape, a chunk per row?) and their row counts: asking
        # h5py for a dataset or its shape costs more than appending a row
        self._datasets: dict[str, tuple[Any, tuple, bool]] = {}
        self._lengths: dict[str, int] = {}
        self.background, self._queue_size = background, queue_size
        self._queue: queue.Queue | None = None
        self._error: BaseException | None = None

    def _open(self):
        if self._file is None:
            import h5py

            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # created aside, then renamed: a kill while h5py creates a file
                with atomic_write(self.path) as tmp:  # would leave it unopenable
                    h5py.File(tmp, "w").close()
            self._file = h5py.File(self.path, "a")
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

    def log(self, arrays: dict[str, Any], step: int = 0, epoch: int = 0) -> None:
        rows = []
        for key, value in arrays.items():
            if hasattr(value, "detach") and value.device.type != "cpu":
                rows.append((key, value.detach().cpu().numpy()))  # the copy to the host is a fresh array
                continue
            if hasattr(value, "detach"):
                value = value.detach().numpy()
            rows.append((key, np.array(value, copy=True)))  # a copy: the caller may change the array in place
        if not self.background:
            self._write([(rows, step, epoch)])
            return
        self._raise_writer_error()
        if self._queue is None:
            self._queue = queue.Queue(maxsize=self._queue_size)
            threading.Thread(target=self._writer, name="HDF5Logger", daemon=True).start()
            atexit.register(self.drain)
        self._queue.put((rows, step, epoch))

    def _write(self, calls: list[tuple[list[tuple[str, np.ndarray]], int, int]]) -> None:
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

    def _writer(self) -> None:
        """Write what is queued: all calls waiting at once, with one extent change per dataset and one flush."""
        while True:
            calls = [self._queue.get()]
            while len(calls) < self._queue_size:
                try:
                    calls.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if self._error is None:
                    self._write(calls)
            except BaseException as error:  # noqa: BLE001 - handed to the training thread
                self._error = error
            finally:
                for _ in calls:
                    self._queue.task_done()

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"log_hdf5 could not write {self.path}: {error}") from error

    def drain(self) -> None:
        """Wait until every queued row is in the file (and raise the writer's error, if any)."""
        if self._queue is not None:
            self._queue.join()
        self._raise_writer_error()

    def row_counts(self) -> dict[str, int]:
        """Rows of every dataset so far (stored in checkpoints, so a resume can cut back to them)."""
        self.drain()
        if self._file is None and not self.path.exists():
            return {}
        f = self._open()
        return {name: int(f[name].shape[0]) for name in f.keys()}

    def truncate_rows(self, counts: dict[str, int]) -> None:
        """Cut every dataset back to `counts[name]` rows (0 for datasets created after the checkpoint)."""
        self.drain()
        f = self._open()
        for name in f.keys():
            keep = counts.get(name, 0)
            if f[name].shape[0] > keep:
                f[name].resize(keep, axis=0)
        self._datasets, self._lengths = {}, {}
        f.flush()

    def close(self) -> None:
        """Write what is queued (raising the writer's error, once), then close the file in any case."""
        try:
            self.drain()
        finally:
            self._datasets, self._lengths = {}, {}
            if self._file is not None:
                file, self._file = self._file, None
                file.close()


def last_logged_time(path: str | Path) -> float:
    """The `time` of the last complete line of a log (0 when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read()
    except OSError:
        return 0.0
    for line in reversed(tail.split(b"\n")[:-1]):   # the part after the last newline is an unfinished line
        try:
            value = json.loads(line).get("time")
        except (json.JSONDecodeError, AttributeError):
            continue
        return float(value) if isinstance(value, (int, float)) else 0.0
    return 0.0


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
    import h5py

    run_dir = Path(run_dir)
    path = run_dir / HDF5_FILE if run_dir.is_dir() else run_dir
    with h5py.File(path, "r") as f:
        names = list(f.keys()) if keys is None else [n for k in keys for n in (k, f"{k}__step", f"{k}__epoch")]
        return {name: f[name][:] for name in names}
