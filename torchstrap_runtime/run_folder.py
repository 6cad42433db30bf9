"""A run folder: the name of every file in it, the atomic write, and the lock.

    <logging.folder>/<logging.run_id>/
        config.json          what the run was started with (provenance.run_record)
        requirements.txt     the Python packages installed when it started, as `pip freeze` lists them
        log.jsonl            one JSON line per Trainer.log call (loggers.JSONLogger)
        arrays.h5            one row per Trainer.log_hdf5 call (loggers.HDF5Logger)
        steps.jsonl          per step the batch's hash and the loss, per epoch the weights' hash (steps_record.py)
        verify.json, verify/ what `torchstrap verify` found (verify.py), the run folders of its re-runs
        checkpoints/         last.pt (resume), best.pt and epoch_<E>.pt (logging.monitor)
        curves.png           loss and accuracy per epoch (plots.plot_curves)
        doctor.json          where the time goes: loader, step, ops, decode ceiling, advice (doctor.py)
        run.lock             the process training into this folder (RunLock)
        tensorboard/, csv/   mirrors of log.jsonl (logging.backends); MLflow's file store is <logging.folder>/mlruns

Every file that must never be seen half-written goes through `atomic_write`: written under a temporary name
in the same folder (`.<name>.<pid>.<random>.tmp`), flushed to disk (fsync), then renamed over the target
(`os.replace`, atomic on POSIX). Temporary files a dead process left behind are removed when a run takes
its folder (`remove_stale_temporaries`); a restart without a checkpoint starts the logs over (`start_logs_over`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

CONFIG_FILE = "config.json"
REQUIREMENTS_FILE = "requirements.txt"
LOG_FILE = "log.jsonl"
HDF5_FILE = "arrays.h5"
STEPS_FILE = "steps.jsonl"
VERIFY_FILE = "verify.json"
VERIFY_DIR = "verify"   # the run folders of `torchstrap verify`'s re-runs
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
CURVES_FILE = "curves.png"
DOCTOR_FILE = "doctor.json"
LOCK_FILE = "run.lock"
TENSORBOARD_DIR = "tensorboard"
CSV_DIR = "csv"
MLRUNS_DIR = "mlruns"   # beside the run folders, shared by them


RUN_ID_RULE = ("a run id is a folder name: no '/' or '\\', not '.' or '..', not absolute, no control "
               "characters")


def check_run_id(run_id: str) -> str:
    """`run_id` when it names one folder inside logging.folder; a UserError stating the rule otherwise."""
    bad = (not run_id.strip() or run_id in (".", "..") or "/" in run_id or "\\" in run_id
           or os.path.isabs(run_id) or any(ord(c) < 32 or ord(c) == 127 for c in run_id))
    if bad:
        raise UserError(f"logging.run_id {run_id!r} is refused: {RUN_ID_RULE}")
    return run_id


def run_path(folder: str | os.PathLike, run_id: str) -> Path:
    """The run folder of `logging.folder` and `logging.run_id` (`check_run_id`: it stays inside the folder)."""
    return Path(folder) / check_run_id(run_id)


def last_checkpoint(run_dir: Path) -> Path:
    """`checkpoints/last.pt`: where a run resumes from."""
    return Path(run_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT


def steps_file(run_dir: Path, rank: int = 0) -> Path:
    """`steps.jsonl` (rank 0), `steps.rank<R>.jsonl` (the other ranks of a `torchstrap verify` re-run)."""
    return Path(run_dir) / (STEPS_FILE if rank == 0 else f"steps.rank{rank}.jsonl")


def best_checkpoint(run_dir: Path) -> Path:
    """`checkpoints/best.pt`: the checkpoint of the best epoch by `logging.monitor`."""
    return Path(run_dir) / CHECKPOINTS_DIR / BEST_CHECKPOINT


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    """`checkpoints/epoch_<E>.pt`: one of the `logging.save_top_k` best epochs."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"epoch_{epoch:04d}.pt"


# ---------------------------------------------------------------------- atomic writes
def temporary_beside(path: Path) -> Path:
    """A new empty file `.<name>.<pid>.<random>.tmp` in `path`'s folder (created with it), where `path` is written
    first (the pid tells whether its writer still lives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def sync_to_disk(path: Path) -> None:
    """fsync a written file, so a crash after the rename cannot leave it empty."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write `path` whole or not at all: the block writes the temporary path it is given; when the block
    succeeds that file is synced and renamed over `path`, when it raises the file is removed.

        with atomic_write(run_dir / "last.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        yield tmp
        sync_to_disk(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """`obj` as indented JSON (values JSON lacks written as their str)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")


def copy_atomic(source: Path, path: Path) -> None:
    with atomic_write(path) as tmp:
        shutil.copyfile(source, tmp)


def write_text_exclusive(path: Path, text: str) -> None:
    """Create `path` holding `text` whole; FileExistsError when it exists (written aside, then hard-linked)."""
    tmp = temporary_beside(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- the lock
class RunFolderBusyError(UserError):
    """Another live process holds the run folder's lock."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder, so that two processes never train into the same run.

        lock = RunLock(run_dir).acquire()     # RunFolderBusyError (a UserError) when another process holds it
        ...
        lock.release()                        # also done at exit, and when the lock object is collected

    The lock is the file `run.lock` holding {"host", "pid", "slurm_job", "token"} as JSON, created whole and
    only when absent (`write_text_exclusive`). A lock whose owner is gone is taken over: a dead pid on this
    host, or the same SLURM job id (a requeued job replacing its earlier self, possibly on another node). This
    process may take its own lock again (a second Trainer on the same run in one process). A file lock would not
    do: flock is unreliable on the network file systems clusters keep runs on, and HDF5's own lock only fails
    later, with h5py's traceback.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "slurm_job": os.environ.get("SLURM_JOB_ID", ""), "token": secrets.token_hex(8)}
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        """The current lock file's content (None: no lock file; {} : unreadable)."""
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def is_stale(self, holder: dict[str, Any]) -> bool:
        """Whether the holder is this process, gone (dead pid on this host) or this SLURM job's earlier run."""
        same_host = holder.get("host") == self.owner["host"]
        if same_host and holder.get("pid") == self.owner["pid"]:
            return True
        if self.owner["slurm_job"] and holder.get("slurm_job") == self.owner["slurm_job"]:
            return True
        return same_host and isinstance(holder.get("pid"), int) and not pid_alive(holder["pid"])

    def acquire(self) -> "RunLock":
        """Take the lock (taking over a stale one); RunFolderBusyError names the run, host and pid otherwise."""
        text = json.dumps(self.owner)
        for _ in range(3):
            try:
                write_text_exclusive(self.path, text)
                break
            except FileExistsError:
                holder = self.holder()
                if holder is None:  # released meanwhile: try again
                    continue
                if not holder or not self.is_stale(holder):
                    raise self.busy(holder) from None
                write_text_atomic(self.path, text)  # take over the stale lock
                if self.holder() != self.owner:  # another process took it over at the same moment
                    raise self.busy(self.holder() or {}) from None
                break
        else:
            raise self.busy(self.holder() or {})
        self.held = True
        self._finalizer = weakref.finalize(self, RunLock._remove, self.path, dict(self.owner))  # at exit too
        return self

    def busy(self, holder: dict[str, Any]) -> RunFolderBusyError:
        if not holder:
            return RunFolderBusyError(f"run folder {self.run_dir} is locked by an unreadable {self.path}; if no "
                                      f"process uses this run, delete that file")
        job = f" (SLURM job {holder['slurm_job']})" if holder.get("slurm_job") else ""
        return RunFolderBusyError(
            f"run folder {self.run_dir} is in use by process {holder.get('pid')} on host {holder.get('host')}{job}; "
            f"wait for it to finish or choose another logging.run_id (if that process is gone, delete {self.path})")

    def release(self) -> None:
        """Remove the lock file if this lock still holds it."""
        if self.held:
            self._finalizer()
            self.held = False

    @staticmethod
    def _remove(path: Path, owner: dict[str, Any]) -> None:
        try:
            if json.loads(path.read_text()) == owner:
                path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def create_run_folder(run_dir: Path) -> RunLock:
    """Create the run folder and take its lock (a second process on this run is refused), then remove the
    temporary files dead processes left in it. A folder that cannot be written is one sentence (`UserError`)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the run folder {run_dir}: {error.strerror} (logging.folder)") from None
    try:
        lock = RunLock(run_dir).acquire()
    except OSError as error:
        raise UserError(unwritable_folder(run_dir, error)) from None
    remove_stale_temporaries(run_dir)
    return lock


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on the file system holding `folder` (0 when it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def last_checkpoint_size(run_dir: Path) -> int:
    """Bytes of `checkpoints/last.pt` (0 when there is none): about what the next checkpoint needs."""
    try:
        return last_checkpoint(run_dir).stat().st_size
    except OSError:
        return 0


def disk_full_sentence(run_dir: Path, needed: int) -> str:
    """The one sentence of a run whose disk is full: the folder, the free space, what the next checkpoint needs,
    what is kept."""
    kept = (f"{last_checkpoint(run_dir)} and the logs up to it are kept" if last_checkpoint(run_dir).exists()
            else "no checkpoint was written yet")
    need = f"the next checkpoint needs {megabytes(needed)}" if needed else "the run needs more space"
    return (f"the disk holding run folder {run_dir} is full ({megabytes(free_bytes(run_dir))} free) and {need}: "
            f"{kept}; free space there and rerun the same command to resume")


def unwritable_folder(run_dir: Path, error: OSError) -> str:
    """The sentence for a run folder a run cannot write into (full disk, read-only, no permission)."""
    if error.errno in DISK_FULL_ERRNOS:
        return disk_full_sentence(run_dir, last_checkpoint_size(run_dir))
    return (f"run folder {run_dir} cannot be written ({error.strerror}): a run writes its lock, logs and "
            f"checkpoints there; make it writable, or copy the run into another logging.folder and resume it there")


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the `atomic_write` temporary files of the run folder (and its checkpoints/) whose writing process
    is gone (a kill during a checkpoint write leaves one); returns them. Call it holding the run's lock."""
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINTS_DIR):
        for path in folder.glob(".*.tmp"):
            pid = path.name[:-len(".tmp")].rsplit(".", 2)[-2]
            if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


def start_logs_over(run_dir: Path) -> bool:
    """A run that starts without a checkpoint: empty log.jsonl and remove arrays.h5 that an earlier attempt
    (killed before its first checkpoint) left, so that no row is written twice. True when there were any."""
    log, arrays = run_dir / LOG_FILE, run_dir / HDF5_FILE
    earlier = (log.exists() and log.stat().st_size > 0) or arrays.exists()
    if earlier:
        with open(log, "wb"):
            pass
        arrays.unlink(missing_ok=True)
    return earlier
