"""`torchstrap` command line: `new`, `update`, `check` (and `demo`, which lives in torchstrap.generator.demo).

    torchstrap --version
    torchstrap new PATH [--template SRC] [--vcs-ref REF] [--defaults] [-d key=value ...]
    torchstrap update [PATH] [--vcs-ref REF] [-d key=value ...] [--trust]
    torchstrap check [PATH] [--template SRC]
    torchstrap runs [FOLDER|RUN_DIR ...] [--group-by KEY] [--sort KEY] [--filter key=value] [--format table|csv|markdown|json]
    torchstrap plot RUNS... --metric val_top1 [--x epoch|step|time] [--out runs.png]
    torchstrap verify RUN_DIR [--steps 20] [--workers 1,4] [--batch-sizes B] [--kill] [--nproc 2]
    torchstrap doctor RUN_DIR       where the time goes: rebuild the run from its config.json, measure, doctor.json

Exit codes: 0 ok; 1 the experiment needs attention (conflicts left, behind its template); 2 usage or
environment error (message printed, no traceback; `--debug` or TORCHSTRAP_DEBUG=1 shows it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from torchstrap.generator.lifecycle import (
    CheckReport,
    UpdateReport,
    check_experiment,
    describe_version,
    new_experiment,
    parse_data,
    read_answers,
    update_experiment,
)
from torchstrap.generator.template_source import ENV_VAR
from torchstrap_runtime import __version__
from torchstrap_runtime.command_line import split_options
from torchstrap_runtime.errors import DEBUG_FLAG, UserError, report

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


def warm_kernels(path: Path) -> None:
    """Compile the experiment's data kernels into this installation's shared cache, unless they are there
    (torchstrap_runtime.kernel_cache); a failure only warns: the first `make train` then compiles them."""
    from torchstrap_runtime import kernel_cache

    if kernel_cache.experiment_package(path) is None or kernel_cache.is_warm(path):
        return
    print(f"Compiling the data pipeline's kernels into {kernel_cache.cache_dir()}, once for this installation "
          "(a minute or so; every later experiment reuses them) ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "torchstrap_runtime.kernel_cache", str(path.resolve())], cwd=path,
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        print(f"warning: compiling the data kernels failed ({last}); the first `make train` compiles them",
              file=sys.stderr)


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
    TMPDIR and enough memory is free there (faster than a slow disk)."""
    shm = Path("/dev/shm")
    if "TMPDIR" in os.environ or not shm.is_dir() or not os.access(shm, os.W_OK):
        return
    stats = os.statvfs(shm)
    if stats.f_bavail * stats.f_frsize >= min_free:
        tempfile.tempdir = str(shm)


def _sentence(err: Exception) -> str:
    """The one-sentence message of an error `main` reports."""
    if isinstance(err, subprocess.CalledProcessError):  # a git command of ours failed
        detail = (err.stderr or "").strip().splitlines()[-1:] or [f"exit code {err.returncode}"]
        return f"`{' '.join(map(str, err.cmd))}` failed: {detail[0]}"
    if isinstance(err, OSError) and not isinstance(err, UserError):
        return f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")
    return str(err)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchstrap", description="Generate and update torchstrap experiments (see docs/LIFECYCLE.md).",
        epilog=f"exit codes: 0 ok; 1 needs attention (conflicts left, behind the template); 2 error "
               f"({DEBUG_FLAG} or TORCHSTRAP_DEBUG=1 shows its traceback)")
    parser.add_argument("--version", action="version", version=f"torchstrap {__version__}")
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
    doctor = sub.add_parser("doctor", help="where the time goes: loader, training step, each data op, advice")
    doctor.add_argument("run_dir", type=Path, help="a run folder (the run is rebuilt from its record in a fresh process)")
    from torchstrap_runtime import verify

    verify.add_arguments(sub.add_parser("verify", help="re-run a run's first steps: is it reproducible?"))
    from torchstrap.generator.runs_cli import add_parsers

    add_parsers(sub)  # `runs` and `plot` (main hands them to torchstrap.generator.runs_cli before this parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    rest = split_options(argv, flags=[DEBUG_FLAG])[1]  # --debug: `report` re-raises errors (reads argv)
    if rest[:1] in (["runs"], ["plot"]):
        from torchstrap.generator import runs_cli

        return runs_cli.main(rest)
    args = build_parser().parse_args(rest)
    previous = tempfile.tempdir
    if args.command != "demo":
        use_ram_tempdir()
    try:
        if args.command == "new":
            defaults = args.defaults or not sys.stdin.isatty()
            path = new_experiment(args.path, parse_data(args.data), defaults=defaults,
                                  template=args.template, vcs_ref=args.vcs_ref, quiet=defaults)
            warm_kernels(path)
            _print_new(path)
            return 0
        if args.command == "update":
            return _print_update(update_experiment(args.path, parse_data(args.data), args.vcs_ref, args.trust))
        if args.command == "check":
            return _print_check(check_experiment(args.path, args.template))
        if args.command == "verify":
            from torchstrap_runtime import verify

            return verify.main(args)
        if args.command == "doctor":
            from torchstrap_runtime.doctor import format_report, remeasure

            print(format_report(remeasure(args.run_dir)))
            return 0
        if args.command == "demo":
            from torchstrap.generator import demo

            return int(demo.main([str(args.path)]) or 0)
    except (UserError, subprocess.CalledProcessError, OSError) as err:  # TemplateError, a git command, a file
        return report(err, f"torchstrap {args.command}", argv, _sentence(err))
    except KeyboardInterrupt:
        print(f"torchstrap {args.command}: interrupted.", file=sys.stderr)
        return 130
    finally:
        tempfile.tempdir = previous  # main() is also called in-process (tests): leave no global change
    return 2


if __name__ == "__main__":
    sys.exit(main())
