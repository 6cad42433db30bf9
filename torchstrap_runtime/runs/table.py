"""Runs as rows: the table of `torchstrap runs` (filter, sort, group over seeds, print to fit the terminal), a
sweep's jobs (`scripts/submit.py --status`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from .folders import Run, RunsError, _is_number, _key, differing_keys, experiment_names, is_run_dir, load_run, sacct_states


def runs_table(runs: list[Run], metric: str = "val_top1", mode: str = "max",
               keys: list[str] | None = None) -> list[dict[str, Any]]:
    """One dict per run: experiment (when the runs come from more than one), run, status, epochs, wall_s, the
    differing hyper-parameters (or `keys`), tags (when any), `best_<metric>` (max or min over epochs, per `mode`),
    `best_epoch` (its epoch, numbered from 0 as in log.jsonl; the first of equal values) and `final_<metric>`.
    `epochs` counts the epochs run, of `training.epochs`."""
    if mode not in ("max", "min"):
        raise RunsError(f"mode must be max or min, got {mode!r}")
    keys = [k for k in (differing_keys(runs) if keys is None else keys) if k != "logging.tags"]
    tagged = any(run.params.get("logging.tags") for run in runs)
    experiments = experiment_names(runs)
    several = len({run.path.resolve().parent for run in runs}) > 1
    rows = []
    for run in runs:
        values = run.metric(metric)
        epochs = [r.get("epoch") for r in run.epochs if _is_number(r.get(metric))]
        target = run.params.get("training.epochs")
        row = {"experiment": experiments[run.path]} if several else {}
        row |= {"run": run.run_id, "status": run.status,
               "epochs": f"{run.epochs_done}/{target}" if isinstance(target, int) else run.epochs_done,
               "wall_s": round(run.wall_time, 2)}
        row.update({k: run.params.get(k) for k in keys})
        if tagged:
            row["tags"] = ",".join(map(str, run.params.get("logging.tags") or []))
        best = (values.index(max(values)) if mode == "max" else values.index(min(values))) if values else None
        row[f"best_{metric}"] = values[best] if values else None
        row["best_epoch"] = epochs[best] if values else None
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



# ---------------------------------------------------------------------- sweeps (scripts/submit.py --status)
def sweep_jobs(folder: str | Path) -> list[dict[str, Any]]:
    """The jobs submitit wrote under `folder` (slurm.folder without %j): `{"job", "state", "run_dir", "slurm_state",
    "function"}` each (`function`: the submitted `launcher.TrainJob`).

    The state comes from sacct when it knows the job (`slurm_state`, else None), else from submitit's result file
    (COMPLETED, FAILED) or PENDING/RUNNING (no result yet)."""
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
        jobs.append({"job": job_id, "state": state, "run_dir": run_dir, "function": submission.function})
    states = sacct_states(job["job"] for job in jobs)
    for job in jobs:
        job["slurm_state"] = states.get(job["job"])
        job["state"] = job["slurm_state"] or job["state"]
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
