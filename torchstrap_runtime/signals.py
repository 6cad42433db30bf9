"""Ctrl-C (SIGINT) and SIGTERM (`kill`, `docker stop`, schedulers) while a Trainer runs.

`stop_on_signals(trainer)` wraps `Trainer.run`. The first signal asks the loop to stop (`request_stop`) and
says so in a line: the loop ends the current optimizer step, saves a full checkpoint (`save_checkpoint`), writes the log's end line, then
`Interrupted` is raised; on its way out `close()` releases run.lock. A second signal stops at once: `Interrupted`
is raised where the program is (a checkpoint being written is left as it was: `atomic_write` removes its
temporary file, the previous last.pt stays). Evaluation alone (`training.eval_only`) stops at the first signal.
The entry point (`errors.exit_on_user_error`) prints `Interrupted`'s one line and exits 130 (SIGINT) or
143 (SIGTERM), without traceback.

Handlers are installed only in the main thread and only over the default ones: a launcher that handles these
signals itself (submitit) keeps its handlers.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}       # 128 + the signal's number, as shells report it
STOP_REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "preempted"}   # the log's end line


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal: `str()` is the line to print, `exit_code` 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def is_default_handler(signum: int, handler: Any) -> bool:
    return handler in (signal.SIG_DFL, None) or (signum == signal.SIGINT and handler is signal.default_int_handler)


def kept_checkpoint(trainer: Any) -> str:
    path = trainer.checkpoint_path
    return f"{path} is kept, rerun the same command to resume from it" if path.exists() \
        else "no checkpoint was written yet, a rerun starts over"


@contextlib.contextmanager
def stop_on_signals(trainer: Any) -> Iterator[None]:
    """While inside: SIGINT/SIGTERM checkpoint at the next step boundary and stop (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) > 1 or trainer.eval_only:
            trainer.stop_reason = STOP_REASONS[received[0]]
            raise Interrupted(f"{name} again: stopped at once, without a checkpoint of this step; "
                              f"{kept_checkpoint(trainer)}" if len(received) > 1 else f"{name}: stopped evaluating",
                              EXIT_CODES[signum])
        trainer.request_stop(STOP_REASONS[signum])
        print(f"{name}: stopping after this step with a checkpoint ({name} again stops at once)", file=sys.stderr,
              flush=True)

    previous = {signum: signal.getsignal(signum) for signum in EXIT_CODES}
    for signum, handler in previous.items():
        if is_default_handler(signum, handler):
            signal.signal(signum, on_signal)
    try:
        yield
    except Interrupted:  # stopped at once: the log says so (a resume cuts the line off with the rows after last.pt)
        with contextlib.suppress(Exception):
            trainer.log({"kind": "end", "status": trainer.stop_reason})
        raise
    finally:
        for signum, handler in previous.items():
            if is_default_handler(signum, handler):
                signal.signal(signum, handler)
    if received and not trainer.finished:
        first = received[0]
        raise Interrupted(f"{signal.Signals(first).name}: stopped at epoch {trainer.epoch}, step {trainer.step} "
                          f"after saving a checkpoint; {kept_checkpoint(trainer)}", EXIT_CODES[first])
