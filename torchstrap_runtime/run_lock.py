"""An exclusive lock on a run folder, so that two processes never train into the same run.

    lock = RunLock(run_dir).acquire()     # RunFolderBusyError (a UserError) when another process holds it
    ...
    lock.release()                        # also done at exit, and when the lock object is collected

The lock is the file `run_dir/run.lock` holding {"host", "pid", "slurm_job", "token"} as JSON, created
atomically (written aside, then hard-linked into place, which fails when the file exists). A lock whose
owner is gone is taken over: a dead pid on this host, or the same SLURM job id (a requeued job replacing
its earlier self, possibly on another node). This process may take its own lock again (a second Trainer on
the same run in one process, as resume tests do). A file lock would not do: flock is unreliable on the
network file systems clusters keep runs on, and HDF5's own lock only fails later, with h5py's traceback.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import weakref
from pathlib import Path
from typing import Any

from .errors import UserError

LOCK_FILE = "run.lock"


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
    """The lock of one run folder, held by this process between `acquire()` and `release()`."""

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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mine = self.run_dir / f".{LOCK_FILE}.{self.owner['pid']}.{self.owner['token']}"
        mine.write_text(json.dumps(self.owner))
        try:
            for _ in range(3):
                try:
                    os.link(mine, self.path)  # atomic: fails if a lock exists
                    break
                except FileExistsError:
                    holder = self.holder()
                    if holder is None:  # released meanwhile: try again
                        continue
                    if not holder or not self.is_stale(holder):
                        raise self.busy(holder) from None
                    os.replace(mine, self.path)  # take over the stale lock
                    if self.holder() != self.owner:  # another process took it over at the same moment
                        raise self.busy(self.holder() or {}) from None
                    break
            else:
                raise self.busy(self.holder() or {})
        finally:
            mine.unlink(missing_ok=True)
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
