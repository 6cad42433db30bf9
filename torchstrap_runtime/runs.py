"""Compare runs: read run folders (config.json, log.jsonl, the lock, the checkpoint) into rows, group, sort, filter.

    from torchstrap_runtime.runs import load_runs, runs_table, group_rows, to_dataframe
    runs = load_runs(["runs"])                      # every run folder under runs/ (or run folders themselves)
    rows = runs_table(runs)                         # one dict per run: id, status, epochs, wall time, the
                                                    # hyper-parameters that differ, best/final val_top1
    groups = group_rows(rows, ["training.seed"])    # seeds folded into mean, std and count
    df = to_dataframe(rows)                         # pandas, when installed
    result = compare(runs, "optimizer.lr=0.1", "optimizer.lr=0.05", paired_by="training.seed")
                                                    # paired over seeds: difference, CI, p-values, power

`torchstrap runs` and `torchstrap plot` are built on these. Only `config.json` and the epoch lines of
`log.jsonl` are parsed for the table (a long log's step lines are skipped unparsed); `arrays.h5` is never read.
"""

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

from .errors import UserError
from .run_folder import CONFIG_FILE, LOG_FILE, RunLock, last_checkpoint, pid_alive

RECENT_S = 300.0                 # with no lock file: a log written this recently counts as a running run
IGNORED_KEYS = ("logging.run_id", "logging.folder", "logging.progress")  # differ without meaning anything
STATUSES = ("running", "finished", "failed", "preempted", "requeued", "stopped early")
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
        return "stopped early" if run.end.get("status") == "stopped early" else "preempted"
    if slurm_state in ("PREEMPTED", "TIMEOUT"):
        return "preempted"
    if run.lock is None and slurm_state is None and run.log_mtime and time.time() - run.log_mtime < RECENT_S:
        return "running"   # no lock file (an older runtime) and a fresh log
    return "failed"


def sacct_states(job_ids: Iterable[str]) -> dict[str, str]:
    """`{job id: SLURM state}` from one `sacct` call ({} when sacct is missing or fails)."""
    job_ids = sorted({str(j) for j in job_ids if j})
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        if "|" in line:
            job, state = line.split("|", 1)
            states[job.strip()] = state.split()[0] if state.strip() else ""
    return states


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


def runs_table(runs: list[Run], metric: str = "val_top1", mode: str = "max",
               keys: list[str] | None = None) -> list[dict[str, Any]]:
    """One dict per run: experiment (when the runs come from more than one), run, status, epochs, wall_s, the
    differing hyper-parameters (or `keys`), tags (when any), `best_<metric>` (max or min over epochs, per `mode`)
    and `final_<metric>`."""
    if mode not in ("max", "min"):
        raise RunsError(f"mode must be max or min, got {mode!r}")
    keys = [k for k in (differing_keys(runs) if keys is None else keys) if k != "logging.tags"]
    tagged = any(run.params.get("logging.tags") for run in runs)
    experiments = experiment_names(runs)
    several = len({run.path.resolve().parent for run in runs}) > 1
    rows = []
    for run in runs:
        values = run.metric(metric)
        target = run.params.get("training.epochs")
        row = {"experiment": experiments[run.path]} if several else {}
        row |= {"run": run.run_id, "status": run.status,
               "epochs": f"{run.epochs_done}/{target}" if isinstance(target, int) else run.epochs_done,
               "wall_s": round(run.wall_time, 2)}
        row.update({k: run.params.get(k) for k in keys})
        if tagged:
            row["tags"] = ",".join(map(str, run.params.get("logging.tags") or []))
        row[f"best_{metric}"] = (max(values) if mode == "max" else min(values)) if values else None
        row[f"final_{metric}"] = values[-1] if values else None
        rows.append(row)
    return rows


def parse_filter(spec: str) -> tuple[str, Any]:
    """`key=value` -> (key, value parsed as JSON when it is JSON: numbers, true/false, null, lists)."""
    if "=" not in spec:
        raise RunsError(f"--filter expects key=value, got {spec!r}")
    key, text = spec.split("=", 1)
    try:
        return key.strip(), json.loads(text)
    except json.JSONDecodeError:
        return key.strip(), text


def filter_runs(runs: list[Run], specs: Iterable[str]) -> list[Run]:
    """The runs whose hyper-parameter (or status/run) equals each `key=value` (all must hold)."""
    for spec in specs:
        key, wanted = parse_filter(spec)
        known = {"run", "status"} | {k for run in runs for k in run.params}
        if key not in known:
            raise RunsError(f"--filter: unknown key {key!r} (a config key such as optimizer.lr, or run/status)")

        def value(run: Run) -> Any:
            return {"run": run.run_id, "status": run.status}.get(key, run.params.get(key))

        runs = [run for run in runs if _matches(value(run), wanted)]
    return runs


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(value, list) and not isinstance(wanted, list):
        return wanted in value or str(wanted) in map(str, value)   # tags=baseline
    return value == wanted or str(value) == str(wanted)


def sort_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Sort by a column (`-key` for descending); missing values last. Over groups, a metric column's name as the
    table header shows it (`best_val_top1`) sorts by the group's mean (`best_val_top1_mean`)."""
    descending, key = key.startswith("-"), key.lstrip("-")
    if rows and not any(key in row for row in rows) and any(f"{key}_mean" in row for row in rows):
        key = f"{key}_mean"
    if rows and not any(key in row for row in rows):
        raise RunsError(f"--sort: unknown column {key!r} (columns: {', '.join(rows[0])})")
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]

    return sorted(present, key=lambda row: _sort_value(row[key]), reverse=descending) + missing


def _sort_value(value: Any) -> tuple:
    """Numbers in order, then anything else by its text."""
    return (0, value, "") if _is_number(value) else (1, 0, str(value))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def group_rows(rows: list[dict[str, Any]], fold: list[str]) -> list[dict[str, Any]]:
    """Fold the `fold` columns (e.g. `training.seed`): rows equal in every other hyper-parameter column make one
    row with `count`, the statuses, and mean/std of every metric column (`<col>_mean`, `<col>_std`)."""
    if not rows:
        return []
    for key in fold:
        if key not in rows[0]:
            raise RunsError(f"--group-by: {key!r} is not a column here (it must differ between the runs shown: "
                            f"{', '.join(rows[0])})")
    fixed = ("run", "status", "epochs", "wall_s")
    numeric = [c for c in rows[0] if c.startswith(("best_", "final_")) or c == "wall_s"]
    by = [c for c in rows[0] if c not in fixed and c not in numeric and c not in fold]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(_key([row.get(c) for c in by]), []).append(row)
    out = []
    for members in groups.values():
        group = {c: members[0].get(c) for c in by}
        group["count"] = len(members)
        statuses = [m["status"] for m in members]
        group["status"] = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        group["runs"] = ",".join(m["run"] for m in members)
        for column in numeric:
            mean, std = mean_std([m[column] for m in members if _is_number(m.get(column))])
            group[f"{column}_mean"], group[f"{column}_std"] = mean, std
        out.append(group)
    return out


def to_dataframe(rows: list[dict[str, Any]]):
    """The rows as a pandas DataFrame (`pip install pandas`)."""
    try:
        import pandas as pd
    except ImportError:
        raise RunsError("the DataFrame needs pandas: pip install pandas") from None
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- printing
def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows as strings, with `<col>_mean`/`<col>_std` pairs shown as one `mean ± std` column."""
    shown = []
    for row in rows:
        cells: dict[str, str] = {}
        for column, value in row.items():
            if column.endswith("_std") and f"{column[:-4]}_mean" in row:
                continue
            if column.endswith("_mean") and f"{column[:-5]}_std" in row:
                std = row[f"{column[:-5]}_std"]
                cells[column[:-5]] = "-" if value is None else f"{_cell(value)} ± {_cell(std)}"
            else:
                cells[column] = _cell(value)
        shown.append(cells)
    return shown


def format_rows(rows: list[dict[str, Any]], fmt: str = "table", width: int | None = None) -> str:
    """`table` (aligned text), `markdown`, `csv` or `json` (raw values). With `width` (a terminal's columns), the
    table fits in it: see `fit_table`."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    cells = display_rows(rows)
    columns = list(dict.fromkeys(c for row in cells for c in row))
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(display_rows(rows) if rows else [])
        return buffer.getvalue().rstrip("\n")
    table = [columns] + [[row.get(c, "") for c in columns] for row in cells]
    if fmt == "markdown":
        lines = ["| " + " | ".join(r) + " |" for r in table]
        lines.insert(1, "|" + "|".join("---" for _ in columns) + "|")
        return "\n".join(lines)
    if fmt != "table":
        raise RunsError(f"--format must be table, csv, markdown or json, got {fmt!r}")
    if width is not None:
        return fit_table(columns, table[1:], width)
    return _aligned(table)


def _aligned(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


_NOT_KEYS = ("experiment", "run", "runs", "status", "epochs", "wall_s", "tags", "count")
WRAP_CELL = 30         # cells are shortened to this many characters before the table is cut into blocks
MIN_CELL = 12          # and to this many, at least, when one block is still too wide


def _is_key_column(column: str) -> bool:
    """A hyper-parameter column (`optimizer.lr`), not a run's own column or a metric."""
    return column not in _NOT_KEYS and not column.startswith(("best_", "final_"))


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest trailing part that no other key shares: optimizer.lr -> lr, but
    data.seed and training.seed stay whole."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if n == len(parts) or not any(other != key and (other == tail or other.endswith("." + tail))
                                          for other in keys):
                short[key] = tail
                break
    return short


def _shorten(cell: str, limit: int) -> str:
    """At most `limit` characters: a path keeps its end (…/last/parts), anything else its start and its end."""
    if len(cell) <= limit:
        return cell
    if "/" in cell:
        return "…" + cell[len(cell) - limit + 1:]
    head = (limit - 1) // 2
    return cell[:head] + "…" + cell[len(cell) - (limit - 1 - head):]


def fit_table(columns: list[str], body: list[list[str]], width: int) -> str:
    """An aligned table no wider than `width` where it can be: first the hyper-parameter headers become their
    short names (`lr`) with a legend below (`lr = optimizer.lr`), then the widest cells are shortened (down to
    WRAP_CELL characters, a path keeping its end), then the table is cut into blocks of columns, each beginning
    with the run's own columns, and a block still too wide has its cells shortened down to MIN_CELL."""
    def line_width(cols: list[int]) -> int:
        return sum(widths[i] for i in cols) + 2 * (len(cols) - 1)

    header = list(columns)
    if _aligned_width([header] + body) > width:
        names = short_names([c for c in columns if _is_key_column(c)])
        header = [names.get(c, c) for c in columns]
    legend = [f"{header[i]} = {c}" for i, c in enumerate(columns) if header[i] != c]
    body = [list(r) for r in body]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(columns))]
    def shrink(cols: list[int], smallest: int) -> None:
        """Shorten the widest cells of `cols`, each column to no fewer than `smallest` characters, until they fit."""
        while line_width(cols) > width:
            widest = max(cols, key=lambda i: widths[i])
            floor = max(smallest, len(header[widest]))
            if widths[widest] <= floor:
                return
            limit = max(floor, widths[widest] - (line_width(cols) - width))
            for r in body:
                r[widest] = _shorten(r[widest], limit)
            widths[widest] = max(len(r[widest]) for r in [header] + body)

    everything = list(range(len(columns)))
    shrink(everything, WRAP_CELL)
    ids = [i for i, c in enumerate(columns) if c in ("experiment", "run", "runs")][:2] or [0]
    blocks, block = [], list(ids)
    for i in everything:
        if i in ids:
            continue
        if len(block) > len(ids) and line_width(block + [i]) > width:
            blocks.append(block)
            block = list(ids)
        block.append(i)
    blocks.append(block)
    for block in blocks:
        shrink(block, MIN_CELL)
    text = "\n\n".join(_aligned([[header[i] for i in b]] + [[r[i] for i in b] for r in body]) for b in blocks)
    return text + ("\n\n" + "\n".join(legend) if legend else "")


def _aligned_width(table: list[list[str]]) -> int:
    return max((len(line) for line in _aligned(table).splitlines()), default=0)


# ---------------------------------------------------------------------- curves
def read_curve(run_dir: str | Path, metric: str, x: str = "epoch") -> tuple[list[float], list[float]]:
    """(xs, ys) of `metric` over a run's log: x is `epoch`, `step` or `time` (the run's wall time in seconds).

    The lines of one kind are used: the kind that logs `metric` most often (train_step lines for a train_loss
    logged every few steps, epoch lines for val_top1). With x = epoch, epoch lines sit at the epoch's end
    (1, 2, ...) and step lines at their fraction of the epochs."""
    from .loggers import read_log

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
            xs.append(record.get("epoch", 0) + 1)
        else:
            xs.append(record.get("step", 0) / steps_per_epoch if steps_per_epoch else record.get("epoch", 0))
    return xs, [float(records[i][metric]) for i in chosen]


# ---------------------------------------------------------------------- sweeps (scripts/submit.py --status)
def sweep_jobs(folder: str | Path) -> list[dict[str, Any]]:
    """The jobs submitit wrote under `folder` (slurm.folder without %j): `{"job", "state", "run_dir"}` each.

    The state comes from sacct when it knows the job, else from submitit's result file (COMPLETED, FAILED) or
    PENDING/RUNNING (no result yet)."""
    import pickle

    folder = Path(folder)
    if not folder.is_dir():
        raise RunsError(f"{folder} is not a folder: give the sweep's submitit folder (slurm.folder without %j)")
    jobs = []
    for pickled in sorted(folder.rglob("*_submitted.pkl")):
        job_id = pickled.name[: -len("_submitted.pkl")]
        try:
            with open(pickled, "rb") as f:
                submission = pickle.load(f)
            config = submission.function.config
            run_dir = Path(config["logging"]["folder"]) / config["logging"]["run_id"]
        except Exception:  # noqa: BLE001 - a job of another kind, or a pickle of an older runtime
            continue
        results = sorted(pickled.parent.glob(f"{job_id}_*_result.pkl"))
        state = "PENDING/RUNNING"
        if results:
            try:
                with open(results[0], "rb") as f:
                    outcome = pickle.load(f)[0]
            except Exception:  # noqa: BLE001
                outcome = "error"
            state = "COMPLETED" if outcome == "success" else "FAILED"
        jobs.append({"job": job_id, "state": state, "run_dir": run_dir})
    states = sacct_states(job["job"] for job in jobs)
    for job in jobs:
        job["state"] = states.get(job["job"], job["state"])
    return jobs


def sweep_rows(folder: str | Path, metric: str = "val_top1") -> list[dict[str, Any]]:
    """One row per job of a sweep: job id and state, then its run's row (`runs_table`) when the run has begun."""
    jobs = sweep_jobs(folder)
    runs = {job["job"]: load_run(job["run_dir"]) for job in jobs if is_run_dir(job["run_dir"])}
    table = {row["run"]: row for row in runs_table(list(runs.values()), metric=metric)} if runs else {}
    rows = []
    for job in jobs:
        row = {"job": job["job"], "job_state": job["state"]}
        run = runs.get(job["job"])
        row.update(table[run.run_id] if run is not None else {"run": job["run_dir"].name, "status": "not started"})
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- paired comparisons
COMPLETE = ("finished", "stopped early")   # statuses whose metric values are a run's outcome
ALPHA, POWER = 0.05, 0.80


@dataclass
class MetricComparison:
    """One metric compared between settings A and B over the pairs of runs that share the paired-by value.

    `pairs`: `{"paired": value, "run_a", "run_b", "a", "b", "difference"}` each (difference = a - b).
    `missing_values`: the complete runs that never logged the metric (not in `pairs`).
    The statistics are None where they are undefined (every difference equal makes the t-test's SD 0)."""

    metric: str
    mode: str                                    # "max" or "min": what the best epoch of a run is for this metric
    pairs: list[dict[str, Any]]
    missing_values: list[str]
    mean_a: float
    mean_b: float
    mean_difference: float
    sd_difference: float
    ci_low: float | None
    ci_high: float | None
    paired_t: float | None
    paired_p: float | None
    wilcoxon_p: float | None
    welch_t: float | None
    welch_p: float | None
    seeds_for_80_power: int | None

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)


@dataclass
class Comparison:
    """`compare`'s result: the settings, how a run's value is taken, the runs left out and why, one
    `MetricComparison` per metric. `as_dict()` is what `--format json` prints."""

    a: str
    b: str
    paired_by: str
    value: str                                   # "best" (max/min over epochs, per `mode`) or "final"
    mode: str
    metrics: list[MetricComparison]
    unpaired: list[dict[str, Any]]               # complete runs without a complete partner: run, setting, reason
    unfinished: list[dict[str, Any]]             # runs of A or B that are not complete: run, setting, status, epochs

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        for metric, original in zip(out["metrics"], self.metrics):
            metric["n_pairs"] = original.n_pairs
        return out


def parse_setting(spec: str, runs: list[Run]) -> tuple[str, Any]:
    """`optimizer.lr=0.1` -> ("optimizer.lr", 0.1), the key checked against the runs' configs."""
    if "=" not in spec:
        raise RunsError(f"--compare expects two KEY=VALUE settings such as optimizer.lr=0.1, got {spec!r}")
    key, value = parse_filter(spec)
    if not any(key in run.params for run in runs):
        raise RunsError(f"--compare: unknown key {key!r} (a config key of the runs, such as optimizer.lr)")
    return key, value


def compare(runs: Iterable[Run | str | Path], a: str, b: str, paired_by: str = "training.seed",
            metric: str | Iterable[str] = "val_top1", mode: str = "max", final: bool = False) -> Comparison:
    """Compare setting `a` with setting `b` (`"optimizer.lr=0.1"`) over runs paired by `paired_by`.

    The runs with setting A and the runs with setting B that share a `paired_by` value (a seed: the same data
    order and augmentations) make a pair. A run's value is its best epoch's value of `metric` (max or min per
    `mode`; a metric written `val_loss:min` has its own), or with `final=True` its last epoch's. Runs of A or B
    that are not finished are listed in `unfinished`, complete runs whose partner is missing or unfinished in
    `unpaired`: none is dropped silently. Per metric, over the n pairs' differences d = A - B:

    - mean difference and its 95 % confidence interval, mean ± t(0.975, n-1) · sd / √n;
    - the paired t-test (`scipy.stats.ttest_rel`) and the Wilcoxon signed-rank test (`scipy.stats.wilcoxon`,
      exact for small n, zero differences dropped) p-values, two-sided;
    - beside them the unpaired Welch t-test (`scipy.stats.ttest_ind(equal_var=False)`) on the same runs' values,
      which ignores the pairing: the gap between the two shows what pairing by seed gains;
    - `seeds_for_80_power`: the smallest number of pairs n ≥ 2 for which a two-sided paired t-test at α = 0.05
      detects the observed effect dz = mean(d) / sd(d) with probability ≥ 0.8, the power being computed exactly
      from the noncentral t distribution, P(|T| > t(0.975, n-1)) with T ~ t(n-1, noncentrality dz·√n)
      (None when the mean difference is 0; 2 when every difference is equal and non-zero).

    `runs`: `Run`s (`load_runs`) or run folders / folders of runs. Bad input raises `RunsError`."""
    runs = list(runs)
    if not all(isinstance(r, Run) for r in runs):
        runs = load_runs(runs)
    if mode not in ("max", "min"):
        raise RunsError(f"mode must be max or min, got {mode!r}")
    metrics = []
    for spec in [metric] if isinstance(metric, str) else list(metric):
        name, _, own_mode = spec.partition(":")
        if own_mode not in ("", "max", "min"):
            raise RunsError(f"--metric {spec!r}: the suffix after ':' must be max or min")
        metrics.append((name, own_mode or mode))
    (key_a, want_a), (key_b, want_b) = parse_setting(a, runs), parse_setting(b, runs)
    if key_a == key_b and _matches(want_a, want_b):
        raise RunsError(f"--compare needs two different settings, got {a!r} twice")
    if not any(paired_by in run.params for run in runs):
        raise RunsError(f"--paired-by: unknown key {paired_by!r} (a config key of the runs, such as training.seed)")
    logged = {k for run in runs for r in run.epochs for k in r}
    for name, _ in metrics:
        if name not in logged:
            shown = sorted(k for k in logged if k not in ("epoch", "step", "time", "kind"))
            raise RunsError(f"no run logs the metric {name!r} (epoch metrics: {', '.join(shown) or 'none'})")
    sides: dict[str, dict[str, list[Run]]] = {"A": {}, "B": {}}
    for run in runs:
        in_a, in_b = _matches(run.params.get(key_a), want_a), _matches(run.params.get(key_b), want_b)
        if in_a and in_b:
            raise RunsError(f"run {run.run_id} has both {a} and {b}: compare settings no run shares")
        if in_a or in_b:
            sides["A" if in_a else "B"].setdefault(_key(run.params.get(paired_by)), []).append(run)
    for side, spec in (("A", a), ("B", b)):
        if not sides[side]:
            values = sorted({_cell(run.params.get(key)) for run in runs
                             for key in [key_a if side == "A" else key_b] if key in run.params})
            raise RunsError(f"--compare: no run has {spec} (values here: {', '.join(values)})")
        for members in sides[side].values():
            if len(members) > 1:
                raise RunsError(f"runs {', '.join(r.run_id for r in members)} have {spec} and the same {paired_by} "
                                f"({_cell(members[0].params.get(paired_by))}): keep one per {paired_by} with --filter")
    labels = {"A": a, "B": b}
    unfinished = [{"run": run.run_id, "setting": labels[side], paired_by: run.params.get(paired_by),
                   "status": run.status, "epochs": run.epochs_done}
                  for side in "AB" for members in sides[side].values() for run in members
                  if run.status not in COMPLETE]
    complete = {side: {k: m[0] for k, m in sides[side].items() if m[0].status in COMPLETE} for side in "AB"}
    unpaired = []
    for side, other in (("A", "B"), ("B", "A")):
        for k, run in complete[side].items():
            if k in complete[other]:
                continue
            partner = sides[other].get(k)
            reason = (f"its partner {partner[0].run_id} is {partner[0].status}" if partner else
                      f"no {labels[other]} run has {paired_by}={_cell(run.params.get(paired_by))}")
            unpaired.append({"run": run.run_id, "setting": labels[side], paired_by: run.params.get(paired_by),
                             "reason": reason})
    matched = [(complete["A"][k], complete["B"][k]) for k in complete["A"] if k in complete["B"]]
    matched.sort(key=lambda pair: _sort_value(pair[0].params.get(paired_by)))
    left_out = "; ".join(f"{r['run']} ({r['reason']})" for r in unpaired) + "; " * bool(unpaired and unfinished) \
        + "; ".join(f"{r['run']} ({r['status']})" for r in unfinished)
    results = [_compare_metric(matched, name, paired_by, own_mode, final, a, b, left_out)
               for name, own_mode in metrics]
    return Comparison(a=a, b=b, paired_by=paired_by, value="final" if final else "best", mode=mode,
                      metrics=results, unpaired=unpaired, unfinished=unfinished)


def run_value(run: Run, metric: str, mode: str = "max", final: bool = False) -> float | None:
    """A run's value of `metric`: its best epoch's (max or min per `mode`) or, with `final`, its last epoch's."""
    values = [float(r[metric]) for r in run.epochs if r.get("kind") == "epoch" and _is_number(r.get(metric))]
    values = values or run.metric(metric)     # an evaluation-only run logs `eval` lines
    if not values:
        return None
    return values[-1] if final else (max(values) if mode == "max" else min(values))


def _compare_metric(matched: list[tuple[Run, Run]], metric: str, paired_by: str, mode: str, final: bool,
                    a: str, b: str, left_out: str) -> MetricComparison:
    import warnings

    from scipy import stats

    pairs, missing = [], []
    for run_a, run_b in matched:
        value_a, value_b = run_value(run_a, metric, mode, final), run_value(run_b, metric, mode, final)
        missing += [r.run_id for r, v in ((run_a, value_a), (run_b, value_b)) if v is None]
        if value_a is not None and value_b is not None:
            pairs.append({"paired": run_a.params.get(paired_by), "run_a": run_a.run_id, "run_b": run_b.run_id,
                          "a": value_a, "b": value_b, "difference": value_a - value_b})
    n = len(pairs)
    if n < 2:
        raise RunsError(f"{metric}: {n} pair(s) of finished runs of {a} and {b} share a {paired_by}, a paired "
                        f"comparison needs at least 2" + (f" (left out: {left_out})" if left_out else ""))
    xs, ys = [p["a"] for p in pairs], [p["b"] for p in pairs]
    diffs = [p["difference"] for p in pairs]
    mean_d, sd_d = mean_std(diffs)
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd_d / math.sqrt(n)
    with warnings.catch_warnings():      # equal values: scipy warns and returns nan, shown as None
        warnings.simplefilter("ignore")
        paired = stats.ttest_rel(xs, ys)
        welch = stats.ttest_ind(xs, ys, equal_var=False)
        try:
            wilcoxon_p = float(stats.wilcoxon(xs, ys).pvalue)
        except ValueError:
            wilcoxon_p = None
    return MetricComparison(
        metric=metric, mode=mode, pairs=pairs, missing_values=missing, mean_a=mean_std(xs)[0],
        mean_b=mean_std(ys)[0],
        mean_difference=mean_d, sd_difference=sd_d, ci_low=mean_d - half, ci_high=mean_d + half,
        paired_t=_finite(paired.statistic), paired_p=_finite(paired.pvalue), wilcoxon_p=_finite(wilcoxon_p),
        welch_t=_finite(welch.statistic), welch_p=_finite(welch.pvalue),
        seeds_for_80_power=seeds_for_power(mean_d, sd_d))


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def paired_power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test with n pairs for the standardized effect dz = mean(d) / sd(d)."""
    from scipy import stats

    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    noncentrality = abs(effect) * math.sqrt(n)
    opposite = float(stats.nct.cdf(-critical, n - 1, noncentrality))   # nan (underflow) for a large effect
    return float(stats.nct.sf(critical, n - 1, noncentrality)) + (opposite if math.isfinite(opposite) else 0.0)


def seeds_for_power(mean_difference: float, sd_difference: float, power: float = POWER,
                    alpha: float = ALPHA) -> int | None:
    """The fewest pairs (≥ 2) whose two-sided paired t-test at `alpha` reaches `power` for this mean and SD of
    the differences (see `compare`); None for a zero mean difference."""
    if mean_difference == 0:
        return None
    if sd_difference == 0:
        return 2
    effect = abs(mean_difference) / sd_difference
    low, high = 1, 2                      # power grows with n: double, then bisect
    while paired_power(high, effect, alpha) < power:
        low, high = high, high * 2
        if high > 1 << 30:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if paired_power(mid, effect, alpha) < power else (low, mid)
    return high


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def format_comparison(comparison: Comparison, fmt: str = "table") -> str:
    """`table` (aligned text), `markdown` or `json`: the summary per metric, each pair, the runs left out."""
    if fmt == "json":
        return json.dumps(comparison.as_dict(), indent=2, default=str)
    if fmt not in ("table", "markdown"):
        raise RunsError(f"--format for --compare must be table, markdown or json, got {fmt!r}")
    c = comparison
    how = (f"the last epoch's value of each run" if c.value == "final" else
           f"the best epoch's value of each run ({c.mode} over epochs; --final for the last epoch's)")
    summary = [{"metric": m.metric + (f" ({m.mode})" if c.value == "best" and m.mode != c.mode else ""),
                "pairs": m.n_pairs, "mean A": _cell(m.mean_a), "mean B": _cell(m.mean_b),
                "A - B": _cell(m.mean_difference),
                "95% CI": f"[{_cell(m.ci_low)}, {_cell(m.ci_high)}]",
                "paired t p": _p(m.paired_p), "Wilcoxon p": _p(m.wilcoxon_p), "Welch p (unpaired)": _p(m.welch_p),
                "seeds for 80% power": _cell(m.seeds_for_80_power)} for m in c.metrics]
    pair_tables = {m.metric: [{c.paired_by: _cell(p["paired"]), "run A": p["run_a"], "run B": p["run_b"],
                               f"{m.metric} A": _cell(p["a"]), f"{m.metric} B": _cell(p["b"]),
                               "A - B": _cell(p["difference"])} for p in m.pairs] for m in c.metrics}
    left_out = [f"unpaired: {r['run']} ({r['setting']}, {c.paired_by}={_cell(r[c.paired_by])}): {r['reason']}"
                for r in c.unpaired]
    left_out += [f"unfinished: {r['run']} ({r['setting']}, {c.paired_by}={_cell(r[c.paired_by])}): {r['status']}, "
                 f"{r['epochs']} epoch(s) logged" for r in c.unfinished]
    left_out += [f"no value of {m.metric}: {run}" for m in c.metrics for run in m.missing_values]
    heading = f"A: {c.a}  vs  B: {c.b}, paired by {c.paired_by}; {how}"
    if fmt == "markdown":
        parts = [f"**{heading}**", format_rows(summary, "markdown")]
        parts += [f"Pairs, {name}:\n\n" + format_rows(rows, "markdown") for name, rows in pair_tables.items()]
        if left_out:
            parts.append("\n".join(f"- {line}" for line in left_out))
        return "\n\n".join(parts)
    parts = [heading, format_rows(summary)]
    parts += [f"pairs, {name}:\n" + format_rows(rows) for name, rows in pair_tables.items()]
    if left_out:
        parts.append("left out:\n" + "\n".join(f"  {line}" for line in left_out))
    return "\n\n".join(parts)
