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

from .compare import COMPLETE, MetricComparison, Comparison, parse_setting, compare, run_value, paired_power, seeds_for_power, format_comparison
from .folders import RECENT_S, IGNORED_KEYS, STATUSES, RunsError, Run, flatten, read_lock, lock_is_live, scan_log, is_run_dir, find_run_dirs, read_record, load_run, run_status, sacct_states, load_runs, differing_keys, experiment_name, experiment_names, read_curve
from .table import runs_table, parse_filter, filter_runs, sort_rows, mean_std, group_rows, to_dataframe, display_rows, format_rows, WRAP_CELL, MIN_CELL, short_names, fit_table, sweep_jobs, sweep_rows

__all__ = [
    "COMPLETE",
    "MetricComparison",
    "Comparison",
    "parse_setting",
    "compare",
    "run_value",
    "paired_power",
    "seeds_for_power",
    "format_comparison",
    "RECENT_S",
    "IGNORED_KEYS",
    "STATUSES",
    "RunsError",
    "Run",
    "flatten",
    "read_lock",
    "lock_is_live",
    "scan_log",
    "is_run_dir",
    "find_run_dirs",
    "read_record",
    "load_run",
    "run_status",
    "sacct_states",
    "load_runs",
    "differing_keys",
    "experiment_name",
    "experiment_names",
    "read_curve",
    "runs_table",
    "parse_filter",
    "filter_runs",
    "sort_rows",
    "mean_std",
    "group_rows",
    "to_dataframe",
    "display_rows",
    "format_rows",
    "WRAP_CELL",
    "MIN_CELL",
    "short_names",
    "fit_table",
    "sweep_jobs",
    "sweep_rows",
]
