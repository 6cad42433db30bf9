"""User errors: a problem the user caused and can fix, told in one sentence, exit code 2, no traceback.

Raise a `UserError` (or one of its kinds below) wherever a user's input is found wrong: a value out of
range, a missing or corrupt file, a busy run folder. Entry points run their `main` through
`exit_on_user_error`, the one place that turns it into `error: <sentence>` on stderr and exit code 2.
`--debug` on the command line, or `TORCHSTRAP_DEBUG=1`, shows the traceback instead. It also ends a run stopped
by Ctrl-C or SIGTERM with one line (exit 130 / 143, `signals.Interrupted`) and turns a full disk or a read-only
folder met anywhere into one sentence.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .command_line import split_options

USER_ERROR_EXIT = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "TORCHSTRAP_DEBUG"
NONDETERMINISTIC_OP = " does not have a deterministic implementation"  # torch's words, with training.deterministic


class UserError(Exception):
    """A problem in what the user gave (value, file, run folder); the message is one sentence saying what
    was given and what is expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named (dataset, checkpoint, config file) does not exist."""


class BadFileError(UserError, ValueError):
    """A file the user named exists but is corrupt, truncated or of another kind."""


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether tracebacks were asked for: `--debug` in `argv` (default: the command line) or TORCHSTRAP_DEBUG=1."""
    given = split_options(sys.argv[1:] if argv is None else argv, flags=[DEBUG_FLAG])[0][DEBUG_FLAG]
    return bool(given) or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def report(error: BaseException, prefix: str = "error", argv: Sequence[str] | None = None,
           message: str | None = None) -> int:
    """Print `prefix: sentence` (a line per sentence of `message`, default the error's) to stderr and return
    the exit code 2; re-raise the error instead when debugging."""
    if debug_requested(argv):
        raise error
    print("\n".join(f"{prefix}: {line}" for line in (message or str(error)).splitlines()), file=sys.stderr)
    return USER_ERROR_EXIT


def fail(error: UserError, prefix: str = "error", argv: Sequence[str] | None = None) -> NoReturn:
    """`report` the error, then exit 2."""
    raise SystemExit(report(error, prefix, argv)) from None


def exit_on_user_error(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> Any:
    """Run `main(argv)` (default: the command line); a UserError exits 2 with its sentence. `--debug` is taken
    out of argv and becomes TORCHSTRAP_DEBUG=1 (for this process and the ones it starts)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    found, rest = split_options(argv, flags=[DEBUG_FLAG])
    if found[DEBUG_FLAG]:
        os.environ[DEBUG_ENV] = "1"
    try:
        return main(rest)
    except UserError as error:
        fail(error, argv=argv)
    except KeyboardInterrupt as error:  # Ctrl-C, SIGTERM (signals.Interrupted): one line, 130 / 143
        if debug_requested(argv):
            raise
        print(f"interrupted: {str(error) or 'Ctrl-C'}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_code", 130)) from None
    except OSError as error:  # a full disk or a read-only folder met outside a run's own checks
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f" writing {error.filename}" if error.filename else ""
        fail(UserError(f"{error.strerror}{where}: free space or make the folder writable, then rerun"), argv=argv)
    except RuntimeError as error:
        if NONDETERMINISTIC_OP not in str(error):
            raise
        op = str(error).split(NONDETERMINISTIC_OP)[0].strip().split()[-1]
        fail(UserError(f"training.deterministic is true but {op} has no deterministic implementation on this "
                       f"device: set training.deterministic false (steps are then not bitwise reproducible) or "
                       f"replace the op that calls it"), argv=argv)
