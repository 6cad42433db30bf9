"""`torchstrap runs` and `torchstrap plot`: compare run folders (see torchstrap_runtime.runs)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from torchstrap_runtime.errors import report
from torchstrap_runtime.run_folder import CONFIG_FILE, LOG_FILE


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """`runs` and `plot` (also parsed alone by `runs_main`, without importing copier)."""
    runs = sub.add_parser("runs", help="one row per run: status, epochs, wall time, differing hyper-parameters, "
                                       "best and final metric")
    _add_run_selection(runs)
    runs.add_argument("--sort", metavar="KEY", help="sort by a column; --sort=-KEY sorts descending, e.g. --sort=-best_val_top1")
    runs.add_argument("--format", default="table", choices=["table", "csv", "markdown", "json"],
                      help="output format (with --compare: table, markdown or json)")
    _add_comparison(runs)

    plot = sub.add_parser("plot", help="overlay a metric of several runs in a PNG (groups: mean with a band)")
    _add_run_selection(plot)
    plot.add_argument("--x", default="epoch", choices=["epoch", "step", "time"], help="x axis (default: epoch)")
    plot.add_argument("--out", type=Path, default=Path("runs.png"), help="PNG to write (default: runs.png)")
    _add_comparison(plot)


def _add_comparison(parser: argparse.ArgumentParser) -> None:
    """`--compare A B --paired-by KEY [--final]`: a paired comparison of two settings over seeds."""
    parser.add_argument("--compare", nargs="+", metavar="KEY=VALUE",
                        help="compare two settings over the runs paired by --paired-by, e.g. "
                             "--compare optimizer.lr=0.1 optimizer.lr=0.05: mean difference A - B with its 95%% CI, "
                             "paired t, Wilcoxon and Welch p-values, seeds needed for 80%% power")
    parser.add_argument("--paired-by", default="training.seed", metavar="KEY",
                        help="the config key runs are paired by (default: training.seed)")
    parser.add_argument("--final", action="store_true",
                        help="with --compare: each run's last-epoch value of --metric (default: its best epoch's)")


def _add_run_selection(parser: argparse.ArgumentParser) -> None:
    """The arguments `runs` and `plot` share: which runs, which metric, which keys to fold."""
    parser.add_argument("paths", nargs="*", default=["runs"], metavar="FOLDER|RUN_DIR",
                        help="run folders, or folders of runs (default: runs)")
    parser.add_argument("--metric", default="val_top1",
                        help="the monitored metric (default: val_top1); with --compare, several comma-separated, "
                             "each with its own best as NAME:min or NAME:max, e.g. val_top1,val_loss:min")
    parser.add_argument("--mode", default="max", choices=["max", "min"], help="best = max or min (default: max)")
    parser.add_argument("--group-by", action="append", default=[], metavar="KEY",
                        help="fold runs that differ only in KEY into mean ± std with the count (repeatable), "
                             "e.g. training.seed")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep runs whose config key (or status) equals VALUE (repeatable)")


def _runs_command(args: argparse.Namespace) -> int:
    """`torchstrap runs` and `torchstrap plot`."""
    from torchstrap_runtime import runs as runs_api

    runs = runs_api.filter_runs(runs_api.load_runs(args.paths), args.filter)
    if not runs:
        raise runs_api.RunsError(f"no run folders (with {CONFIG_FILE} or {LOG_FILE}) in {' '.join(args.paths)}"
                                 + (" match the filters" if args.filter else ""))
    if args.compare is not None:
        return _compare_command(args, runs)
    if args.command == "plot":
        known = {k for run in runs for r in run.epochs for k in r}
        if args.metric not in known and not any(_logs_key(run.path, args.metric) for run in runs):
            raise runs_api.RunsError(f"no run logs the metric {args.metric!r} "
                                     f"(epoch metrics: {', '.join(sorted(k for k in known if k not in ('epoch', 'step', 'time', 'kind')))})")
        from torchstrap_runtime.plots import plot_runs

        fold = args.group_by or (["training.seed"] if "training.seed" in runs_api.differing_keys(runs) else [])
        print(f"wrote {plot_runs(runs, args.metric, args.x, args.out, fold=fold)}")
        return 0
    rows = runs_api.runs_table(runs, metric=args.metric, mode=args.mode)
    if args.metric not in {k for run in runs for r in run.epochs for k in r}:
        print(f"torchstrap runs: no epoch record holds {args.metric!r} (use --metric)", file=sys.stderr)
    if args.group_by:
        rows = runs_api.group_rows(rows, args.group_by)
    if args.sort:
        rows = runs_api.sort_rows(rows, args.sort)
    print(runs_api.format_rows(rows, args.format, width=_table_width(args.format)))
    return 0


def _table_width(fmt: str) -> int | None:
    """The terminal's width for a table printed to a terminal (or with COLUMNS set); None: print it whole."""
    if fmt != "table" or not (sys.stdout.isatty() or os.environ.get("COLUMNS")):
        return None
    return shutil.get_terminal_size().columns


def _compare_command(args: argparse.Namespace, runs: list) -> int:
    """`torchstrap runs --compare A B` prints the comparison; `torchstrap plot --compare A B` draws its pairs."""
    from torchstrap_runtime import runs as runs_api

    if len(args.compare) != 2:
        raise runs_api.RunsError(f"--compare needs exactly two KEY=VALUE settings (A then B, e.g. --compare "
                                 f"optimizer.lr=0.1 optimizer.lr=0.05), got {len(args.compare)}")
    if args.group_by or getattr(args, "sort", None):
        raise runs_api.RunsError(f"{'--group-by' if args.group_by else '--sort'} does not apply to --compare "
                                 f"(the runs are paired by --paired-by {args.paired_by})")
    if args.command == "runs" and args.format == "csv":
        raise runs_api.RunsError("--format for --compare must be table, markdown or json, got 'csv'")
    metrics = [m for m in args.metric.split(",") if m]
    comparison = runs_api.compare(runs, *args.compare, paired_by=args.paired_by, metric=metrics, mode=args.mode,
                                  final=args.final)
    if args.command == "plot":
        from torchstrap_runtime.plots import plot_comparison

        print(f"wrote {plot_comparison(comparison, args.out)}")
        return 0
    print(runs_api.format_comparison(comparison, args.format))
    return 0


def _logs_key(run_dir: Path, key: str) -> bool:
    """Whether any line of the run's log.jsonl has `key` (the step lines, when no epoch line has it)."""
    try:
        return f'"{key}":'.encode() in (run_dir / LOG_FILE).read_bytes()
    except OSError:
        return False


def _fail(command: str, err: BaseException) -> int:
    """One line on stderr for an OS error or an interrupt; the exit code (2, or 130 when interrupted)."""
    if isinstance(err, KeyboardInterrupt):
        print(f"torchstrap {command}: interrupted.", file=sys.stderr)
        return 130
    print(f"torchstrap {command}: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    """`torchstrap runs ...` / `torchstrap plot ...`: bad input is one sentence and exit code 2."""
    parser = argparse.ArgumentParser(prog="torchstrap")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    from torchstrap_runtime.runs import RunsError

    try:
        return _runs_command(args)
    except RunsError as err:  # a missing folder, an unknown key or metric
        return report(err, f"torchstrap {args.command}", argv)
    except (OSError, KeyboardInterrupt) as err:
        return _fail(args.command, err)
