"""`torchstrap` command line: `new`, `update`, `check`, `runs`, `plot` (and `demo`, which lives in generator.demo).

    torchstrap new PATH [--template SRC] [--vcs-ref REF] [--defaults] [-d key=value ...]
    torchstrap update [PATH] [--vcs-ref REF] [-d key=value ...] [--trust]
    torchstrap check [PATH] [--template SRC]
    torchstrap runs [FOLDER|RUN_DIR ...] [--group-by KEY] [--sort KEY] [--filter key=value] [--format table|csv|markdown|json]
    torchstrap plot RUNS... --metric val_top1 [--x epoch|step|time] [--out runs.png]

Exit codes: 0 ok; 1 the experiment needs attention (conflicts left, behind its template); 2 usage or
environment error (message printed, no traceback).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_LIFECYCLE_NAMES = ("CheckReport", "UpdateReport", "check_experiment", "describe_version", "new_experiment",
                    "parse_data", "read_answers", "update_experiment", "ENV_VAR", "TemplateError")


def _load_lifecycle() -> None:
    """Import generator.lifecycle into this module: it imports copier (~0.4 s), which `runs`/`plot` do not need."""
    global CheckReport, UpdateReport, check_experiment, describe_version, new_experiment, parse_data
    global read_answers, update_experiment, ENV_VAR, TemplateError
    from generator.lifecycle import (
        CheckReport,
        UpdateReport,
        check_experiment,
        describe_version,
        new_experiment,
        parse_data,
        read_answers,
        update_experiment,
    )
    from generator.template_source import ENV_VAR, TemplateError


def __getattr__(name: str):
    """`from generator.cli import new_experiment` still works (the lifecycle is imported on first use)."""
    if name in _LIFECYCLE_NAMES:
        _load_lifecycle()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["main", "new_experiment", "update_experiment", "check_experiment"]


def _print_new(path: Path) -> None:
    answers = read_answers(path)
    print(f"Created {path} from template {describe_version(str(answers['_commit']))} ({answers['_src_path']}).")
    print("A git repository with a first commit was made there, so `torchstrap update` can bring template fixes.")
    print("Next steps:")
    print(f"  cd {path}")
    for target, help_text in _make_targets(path / "Makefile"):
        print(f"  make {target:<14s}# {help_text}")
    print(f"  {'less README.md':<19s}# where to edit: trainer hooks, config, data pipeline")
    print(f"  {'torchstrap check':<19s}# later: is the template ahead of you? then `torchstrap update`")


def _make_targets(makefile: Path) -> list[tuple[str, str]]:
    """(target, help) of every `target: ... ## help` line of a Makefile."""
    if not makefile.is_file():
        return []
    found = re.findall(r"^([\w-]+):[^\n#]*## *(.+)$", makefile.read_text(), flags=re.M)
    return [(target, help_text.strip()) for target, help_text in found]


def _print_update(report: UpdateReport) -> int:
    before, after = describe_version(report.version_before), describe_version(report.version_after)
    print(f"Updated {report.path}: template {before} -> {after}." if before != after else
          f"Re-applied template {after} to {report.path}.")
    if report.changed:
        print("Changed files (review with `git diff`, then commit):")
        for line in report.changed:
            print(f"  {line}")
    else:
        print("Nothing changed.")
    if report.kept:
        print("Kept your edited files that this template version (or your new answers) no longer generates; "
              "`git rm` them if you do not need them:")
        for name in report.kept:
            print(f"  {name}")
    problems = [f"  {name}  (conflict markers)" for name in report.conflicts]
    problems += [f"  {name}  (rejected patch; merge it by hand, then delete it)" for name in report.rejects]
    if problems:
        print(f"{len(problems)} file(s) need your attention: your edit and the template's edit overlap.")
        print("Keep what you want between <<<<<<< before updating / ======= / >>>>>>> after updating, "
              "then `git add` and commit:")
        print("\n".join(problems))
        return 1
    return 0


def _print_check(report: CheckReport) -> int:
    print(f"{report.path}: template {describe_version(report.version)} from {report.template}")
    if report.newer:
        print(f"Behind the template by {len(report.newer)} version(s): {', '.join(report.newer)}. "
              "Run `torchstrap update`.")
    elif report.latest is None:
        print("The template has no release tag yet: nothing to compare with.")
    else:
        print(f"Up to date with the template's latest release ({report.latest}).")
    for name in report.conflicts:
        print(f"Conflict markers left in {name}")
    for name in report.rejects:
        print(f"Rejected patch left: {name}")
    return 0 if report.ok else 1


def use_ram_tempdir(min_free: int = 512 * 2**20) -> None:
    """Put copier's temporary clones and renders (3-5 per command) in /dev/shm when the user has not set
    TMPDIR and enough memory is free there: an update is ~40% faster than on a slow disk."""
    shm = Path("/dev/shm")
    if "TMPDIR" in os.environ or not shm.is_dir() or not os.access(shm, os.W_OK):
        return
    stats = os.statvfs(shm)
    if stats.f_bavail * stats.f_frsize >= min_free:
        tempfile.tempdir = str(shm)


def build_parser() -> argparse.ArgumentParser:
    _load_lifecycle()
    parser = argparse.ArgumentParser(
        prog="torchstrap", description="Generate and update torchstrap experiments (see docs/LIFECYCLE.md).",
        epilog="exit codes: 0 ok; 1 needs attention (conflicts left, behind the template); 2 error")
    sub = parser.add_subparsers(dest="command", required=True)

    new = sub.add_parser("new", help="generate an experiment (a git repository) from the template")
    new.add_argument("path", type=Path, help="new folder for the experiment")
    new.add_argument("--template", help=f"git path or URL of the template (default: ${ENV_VAR}, else this checkout)")
    new.add_argument("--vcs-ref", help="template tag/branch/commit (default: latest release tag, or the checkout's HEAD)")
    new.add_argument("--defaults", action="store_true", help="use defaults for unanswered questions (no prompts)")
    new.add_argument("-d", "--data", action="append", metavar="KEY=VALUE", help="answer a question")

    update = sub.add_parser("update", help="bring template changes into an experiment")
    update.add_argument("path", nargs="?", type=Path, default=Path("."), help="experiment folder (default: .)")
    update.add_argument("--vcs-ref", help="template version to update to (default: latest release tag)")
    update.add_argument("-d", "--data", action="append", metavar="KEY=VALUE", help="change an answer")
    update.add_argument("--trust", action="store_true", help="allow the template's _migrations to run")

    check = sub.add_parser("check", help="is the experiment behind its template, or are conflicts left?")
    check.add_argument("path", nargs="?", type=Path, default=Path("."), help="experiment folder (default: .)")
    check.add_argument("--template", help="compare with this template clone/URL instead of the recorded one (CI)")

    demo = sub.add_parser("demo", help="generate, train and plot the demo experiment")
    demo.add_argument("path", nargs="?", default="demo-experiment", help="folder (default: demo-experiment)")
    _add_runs_parsers(sub)
    return parser


def _add_runs_parsers(sub: argparse._SubParsersAction) -> None:
    """`runs` and `plot` (also parsed alone by `runs_main`, without importing copier)."""
    runs = sub.add_parser("runs", help="one row per run: status, epochs, wall time, differing hyper-parameters, "
                                       "best and final metric")
    _add_run_selection(runs)
    runs.add_argument("--sort", metavar="KEY", help="sort by a column; --sort=-KEY sorts descending, e.g. --sort=-best_val_top1")
    runs.add_argument("--format", default="table", choices=["table", "csv", "markdown", "json"])

    plot = sub.add_parser("plot", help="overlay a metric of several runs in a PNG (groups: mean with a band)")
    _add_run_selection(plot)
    plot.add_argument("--x", default="epoch", choices=["epoch", "step", "time"], help="x axis (default: epoch)")
    plot.add_argument("--out", type=Path, default=Path("runs.png"), help="PNG to write (default: runs.png)")


def _add_run_selection(parser: argparse.ArgumentParser) -> None:
    """The arguments `runs` and `plot` share: which runs, which metric, which keys to fold."""
    parser.add_argument("paths", nargs="*", default=["runs"], metavar="FOLDER|RUN_DIR",
                        help="run folders, or folders of runs (default: runs)")
    parser.add_argument("--metric", default="val_top1", help="the monitored metric (default: val_top1)")
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
        raise runs_api.RunsError(f"no run folders (with config.json or log.jsonl) in {' '.join(args.paths)}"
                                 + (" match the filters" if args.filter else ""))
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
    print(runs_api.format_rows(rows, args.format))
    return 0


def _logs_key(run_dir: Path, key: str) -> bool:
    """Whether any line of the run's log.jsonl has `key` (the step lines, when no epoch line has it)."""
    try:
        return f'"{key}":'.encode() in (run_dir / "log.jsonl").read_bytes()
    except OSError:
        return False


def _fail(command: str, err: BaseException) -> int:
    """One line on stderr for an OS error or an interrupt; the exit code (2, or 130 when interrupted)."""
    if isinstance(err, KeyboardInterrupt):
        print(f"torchstrap {command}: interrupted.", file=sys.stderr)
        return 130
    print(f"torchstrap {command}: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
    return 2


def runs_main(argv: list[str]) -> int:
    """`torchstrap runs ...` / `torchstrap plot ...`: bad input is one sentence and exit code 2."""
    parser = argparse.ArgumentParser(prog="torchstrap")
    _add_runs_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    from torchstrap_runtime.runs import RunsError

    try:
        return _runs_command(args)
    except RunsError as err:  # a missing folder, an unknown key or metric
        print(f"torchstrap {args.command}: {err}", file=sys.stderr)
        return 2
    except (OSError, KeyboardInterrupt) as err:
        return _fail(args.command, err)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["runs"], ["plot"]):
        return runs_main(argv)
    args = build_parser().parse_args(argv)
    previous = tempfile.tempdir
    if args.command != "demo":
        use_ram_tempdir()
    try:
        if args.command == "new":
            defaults = args.defaults or not sys.stdin.isatty()
            path = new_experiment(args.path, parse_data(args.data), defaults=defaults,
                                  template=args.template, vcs_ref=args.vcs_ref, quiet=defaults)
            _print_new(path)
            return 0
        if args.command == "update":
            return _print_update(update_experiment(args.path, parse_data(args.data), args.vcs_ref, args.trust))
        if args.command == "check":
            return _print_check(check_experiment(args.path, args.template))
        if args.command == "demo":
            from generator import demo  # written by the lead

            return int(demo.main([str(args.path)]) or 0)
    except TemplateError as err:
        print(f"torchstrap {args.command}: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:  # a git command of ours failed
        detail = (err.stderr or "").strip().splitlines()[-1:] or [f"exit code {err.returncode}"]
        print(f"torchstrap {args.command}: `{' '.join(map(str, err.cmd))}` failed: {detail[0]}", file=sys.stderr)
        return 2
    except (OSError, KeyboardInterrupt) as err:
        return _fail(args.command, err)
    finally:
        tempfile.tempdir = previous  # main() is also called in-process (tests): leave no global change
    return 2


if __name__ == "__main__":
    sys.exit(main())
