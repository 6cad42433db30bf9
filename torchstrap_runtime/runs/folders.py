"""Run folders read into `Run`s: config.json, the epoch lines of log.jsonl, the lock, the checkpoint; a run's
status, the keys that differ between runs, a metric's curve."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from ..run_folder import CONFIG_FILE, LOG_FILE, RunLock, last_checkpoint, pid_alive


RECENT_S = 300.0                 # with no lock file: a log written this recently counts as a running run
IGNORED_KEYS = ("logging.run_id", "logging.folder", "logging.progress")  # differ without meaning anything
STATUSES = ("running", "finished", "failed", "preempted", "interrupted", "requeued", "stopped early")
_MARK = b'"kind": "e'      # the lines the table needs: "kind": "epoch", "eval" and "end"


class RunsError(UserError, ValueError):
    """Bad input to `torchstrap runs`/`plot` (a missing folder, an unknown key): one sentence for the user."""


@dataclass
class Run:
    """One run folder: its config, its epoch records, and what its files say about its state."""

    path: Path
    record: dict[str, Any]                       # config.json (empty when missing)
    epochs: list[dict[str, Any]]                 # the `kind: epoch` (and `kind: eval`) lines of log.jsonl
    end: dict[str, Any] | None                   # the `kind: end` line, when the run returned
    last_time: float | None                      # the logged `time` of the last line
    wall_time: float                             # seconds, summed over the processes that wrote the log
    log_mtime: float | None
    has_checkpoint: bool
    lock: dict[str, Any] | None
    status: str = ""
    params: dict[str, Any] = field(default_factory=dict)   # flat `section.key` hyper-parameters

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def epochs_done(self) -> int:
        return max((int(r.get("epoch", 0)) + 1 for r in self.epochs if r.get("kind") == "epoch"), default=0)

    def metric(self, name: str) -> list[float]:
        """The values of `name` in the epoch records, in order (non-numbers skipped)."""
        return [float(r[name]) for r in self.epochs if _is_number(r.get(name))]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """`{"optimizer": {"lr": 0.1}}` -> `{"optimizer.lr": 0.1}` (one level: config sections)."""
    flat = {}
    for section, values in config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[section] = values
    return flat


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The run's lock file (`run_folder.RunLock`): `{"host", "pid", ...}`, {} when unreadable, None when absent."""
    return RunLock(run_dir).holder()


def lock_is_live(lock: dict[str, Any] | None) -> bool:
    """A lock of this host whose pid lives; a lock of another host counts as live (it cannot be checked)."""
    if not lock:
        return False
    if lock.get("host") not in (None, socket.gethostname()):
        return True
    pid = lock.get("pid")
    return isinstance(pid, int) and pid > 0 and pid_alive(pid)


def scan_log(path: Path) -> tuple[list[dict], dict | None, float | None, float]:
    """(epoch/eval records, the end record, the last line's time, wall time) of a log.jsonl.

    Only the lines holding an epoch, eval or end record are found (by byte search) and parsed. The wall time is
    the last line's time (a resumed run's times continue); logs of older runtimes, whose time restarted at 0 in
    each process, get the sum of each process's last time seen in those lines."""
    try:
        data = path.read_bytes()
    except OSError:
        return [], None, None, 0.0
    data = data[:data.rfind(b"\n") + 1]          # a line cut by a kill has no newline yet
    lines = []
    at = data.find(_MARK)
    while at >= 0:
        stop = data.find(b"\n", at)
        lines.append(data[data.rfind(b"\n", 0, at) + 1:stop])
        at = data.find(_MARK, stop)
    try:
        parsed = json.loads(b"[" + b",".join(lines) + b"]")   # one call: ~30x faster than a call per line
    except json.JSONDecodeError:
        parsed = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                parsed.append(json.loads(line))
    records, end, times = [], None, []
    for record in parsed:
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind == "end":
            end = record
        elif kind in ("epoch", "eval"):
            end = None if kind == "epoch" else end
            records.append(record)
        else:
            continue
        if _is_number(record.get("time")):
            times.append(float(record["time"]))
    last_time = None
    if data:
        try:
            last_time = float(json.loads(data[data.rfind(b"\n", 0, len(data) - 1) + 1:]).get("time"))
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            pass
    if last_time is not None:
        times.append(last_time)
    return records, end, last_time, _wall_time(times)


def _wall_time(times: list[float]) -> float:
    """Sum of the last time of each process: a time smaller than the one before starts a new process."""
    total, previous = 0.0, None
    for t in times:
        if previous is not None and t < previous:
            total += previous
        previous = t
    return total + (previous or 0.0)


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / LOG_FILE).is_file()


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders given directly, or the run folders directly under the given folders (sorted by name)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise RunsError(f"{path} is not a folder: give run folders or a folder of runs (logging.folder)")
        if is_run_dir(path):
            found.append(path)
            continue
        with os.scandir(path) as entries:
            children = sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))
        found.extend(child for child in children if is_run_dir(child))
    return list(dict.fromkeys(found))


def read_record(path: Path) -> dict[str, Any]:
    """A run's config.json ({} when missing); one warning line on stderr when it is there but unreadable."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        print(f"warning: {path} cannot be read ({type(error).__name__}), its run shows no config values",
              file=sys.stderr)
        return {}
    if not isinstance(record, dict):
        print(f"warning: {path} holds a JSON {type(record).__name__}, not a run record: its run shows no config "
              f"values", file=sys.stderr)
        return {}
    return record


def load_run(path: str | Path) -> Run:
    """Read one run folder (config.json, the epoch lines of log.jsonl, the lock, the checkpoint's presence)."""
    path = Path(path)
    record = read_record(path / CONFIG_FILE)
    epochs, end, last_time, wall = scan_log(path / LOG_FILE)
    try:
        log_mtime = (path / LOG_FILE).stat().st_mtime
    except OSError:
        log_mtime = None
    run = Run(path=path, record=record, epochs=epochs, end=end, last_time=last_time, wall_time=wall,
              log_mtime=log_mtime, has_checkpoint=last_checkpoint(path).exists(), lock=read_lock(path),
              params=flatten(record.get("config") or {}))
    run.status = run_status(run)
    return run


def run_status(run: Run, slurm_state: str | None = None) -> str:
    """running, finished, failed, preempted, requeued or stopped early, from the lock, the log and sacct."""
    if lock_is_live(run.lock) or slurm_state in ("RUNNING", "COMPLETING"):
        return "running"
    if slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
        return "requeued"
    target = run.params.get("training.epochs")
    finished = (run.end or {}).get("status") == "finished" or (
        isinstance(target, int) and target > 0 and run.epochs_done >= target) or (
        run.params.get("training.eval_only") and any(r.get("kind") == "eval" for r in run.epochs))
    if finished:
        return "finished"
    if run.end is not None:
        status = run.end.get("status")  # a run ended by a full disk or memory says "failed", by Ctrl-C "interrupted"
        return status if status in ("stopped early", "failed", "interrupted") else "preempted"
    if slurm_state in ("PREEMPTED", "TIMEOUT"):
        return "preempted"
    if run.lock is None and slurm_state is None and run.log_mtime and time.time() - run.log_mtime < RECENT_S:
        return "running"   # no lock file (an older runtime) and a fresh log
    return "failed"


def slurm_job_rows(command: list[str], job_ids: Iterable[str]) -> list[tuple[str, str]]:
    """(job id, state) rows that a SLURM `command` printing `JOBID|STATE` lines gives for `job_ids`
    ([] when the command is missing or fails)."""
    job_ids = sorted({str(j) for j in job_ids if j})
    if not job_ids or shutil.which(command[0]) is None:
        return []
    try:
        out = subprocess.run([*command, "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [tuple(part.strip() for part in line.split("|", 1)) for line in out.stdout.splitlines() if "|" in line]


def sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """`{job id: SLURM state}` from one `sacct` call ({} when sacct is missing or fails)."""
    rows = slurm_job_rows(["sacct", "-n", "-P", "-X", "-o", "JobID,State"], job_ids)
    return {job: state.split()[0] if state else "" for job, state in rows}


def load_runs(paths: Iterable[str | Path] = ("runs",), use_sacct: bool = True) -> list[Run]:
    """Every run under `paths` (run folders or folders of runs); SLURM states refine the status when recorded."""
    runs = [load_run(p) for p in find_run_dirs(paths)]
    if use_sacct:
        states = sacct_states(r.record.get("slurm_job_id") for r in runs)
        for run in runs:
            state = states.get(str(run.record.get("slurm_job_id")))
            if state:
                run.status = run_status(run, state)
    return runs


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def differing_keys(runs: list[Run]) -> list[str]:
    """The hyper-parameters whose values are not the same in every run (in config order)."""
    keys = list(dict.fromkeys(k for run in runs for k in run.params))
    differ = []
    for key in keys:
        first = runs[0].params.get(key)
        if key not in IGNORED_KEYS and any(run.params.get(key) != first for run in runs):
            differ.append(key)
    return differ


def experiment_name(run: Run) -> str:
    """The experiment a run belongs to: the folder holding its runs folder (`my-idea` for my-idea/runs/<id>), or
    the runs folder itself when it is not named `runs`."""
    folder = run.path.resolve().parent
    return folder.parent.name if folder.name == "runs" and folder.parent.name else folder.name


def experiment_names(runs: list[Run]) -> dict[Path, str]:
    """`experiment_name` of each run (by its path); where two different folders share a name, the folder's path."""
    folders = {run.path: run.path.resolve().parent for run in runs}
    names = {run.path: experiment_name(run) for run in runs}
    shared = {name for name in names.values() if len({folders[p] for p, other in names.items() if other == name}) > 1}
    return {path: str(folders[path].parent if folders[path].name == "runs" else folders[path]) if name in shared
            else name for path, name in names.items()}



# ---------------------------------------------------------------------- curves
def read_curve(run_dir: str | Path, metric: str, x: str = "epoch") -> tuple[list[float], list[float]]:
    """(xs, ys) of `metric` over a run's log: x is `epoch`, `step` or `time` (the run's wall time in seconds).

    The lines of one kind are used: the kind that logs `metric` most often (train_step lines for a train_loss
    logged every few steps, epoch lines for val_top1). With x = epoch, epoch lines sit at their epoch as
    log.jsonl and the console number it (0, 1, ...) and step lines at the epochs done (epoch E spans E to E + 1)."""
    from ..loggers import read_log

    if x not in ("epoch", "step", "time"):
        raise RunsError(f"--x must be epoch, step or time, got {x!r}")
    records = read_log(run_dir)
    times, offset, previous = [], 0.0, None
    for record in records:   # logs of older runtimes restart `time` at 0 in each process: add them up
        t = record.get("time")
        if _is_number(t):
            if previous is not None and t < previous:
                offset += previous
            previous = t
        times.append(offset + (t if _is_number(t) else 0.0))
    by_kind: dict[Any, list[int]] = {}
    for i, record in enumerate(records):
        if record.get("kind") != "end" and _is_number(record.get(metric)):
            by_kind.setdefault(record.get("kind"), []).append(i)
    if not by_kind:
        return [], []
    kind, chosen = max(by_kind.items(), key=lambda item: len(item[1]))
    epoch_ends = [r for r in records if r.get("kind") == "epoch" and r.get("step")]
    steps_per_epoch = epoch_ends[0]["step"] / (epoch_ends[0].get("epoch", 0) + 1) if epoch_ends else None
    xs = []
    for i in chosen:
        record = records[i]
        if x == "step":
            xs.append(record.get("step", 0))
        elif x == "time":
            xs.append(times[i])
        elif kind in ("epoch", "eval"):
            xs.append(record.get("epoch", 0))
        else:
            xs.append(record.get("step", 0) / steps_per_epoch if steps_per_epoch else record.get("epoch", 0))
    return xs, [float(records[i][metric]) for i in chosen]
