"""The body of a generated experiment's `train.py`: read the config, build the experiment's Trainer, train.

    def main(argv=None):
        return train_main(Trainer, config.load, argv, description="Train my-experiment")

`config.load` reads the declared defaults, configs/default.yaml, each `-C` file and the command line
(`--help` and `--print-config` print and exit); a bad value stops there, before any work, with one sentence
and exit code 2 (the caller wraps `main` in `errors.exit_on_user_error`, which also takes `--debug`).
`--doctor` measures where the time goes (loader, training step, each data op) into doctor.json instead of
training.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from .doctor import report_instead_of_training, split_doctor_flag


def train_main(trainer_class: Callable[[], Any], load_config: Callable[..., Any], argv: list[str] | None = None,
               description: str = "") -> dict:
    """Load the config from `argv` (default: the command line) with `load_config(argv, description=...)`, build
    `trainer_class()` and run it; rank 0 prints the summary. Returns the last epoch record (with `--doctor`:
    the doctor's report, and nothing is trained)."""
    argv, doctor = split_doctor_flag(sys.argv[1:] if argv is None else argv)
    load_config(argv, description=description)
    trainer = trainer_class()
    if doctor:
        return report_instead_of_training(trainer)
    record = trainer.run()
    if trainer.is_main:
        trainer.print_summary(record)
    return record
