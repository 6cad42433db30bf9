"""The product spec's hook order, read from docs/workflow.txt (the one file tests, template and README follow)."""

from __future__ import annotations

import re
from pathlib import Path

SPEC_FILE = Path(__file__).resolve().parents[1] / "docs" / "workflow.txt"
HOOK = re.compile(r"\b(initialize_\w+|load_checkpoint|(?:before|after)_\w+|train_step|eval_step)\b")


def spec_hooks() -> tuple[list[str], list[str]]:
    """(hooks `__init__` calls, hooks of one epoch with each per-batch group once), in the spec's order."""
    init, loop = SPEC_FILE.read_text().split("train_all_epochs:")
    return HOOK.findall(init), HOOK.findall(loop)


def spec_epoch(train_batches: int, eval_batches: int) -> list[str]:
    """The hook calls of one epoch: each run of per-batch hooks (`*_step`) repeated once per batch."""
    calls, group = [], []
    for hook in spec_hooks()[1] + [""]:
        if hook.endswith("_step"):
            group.append(hook)
            continue
        if group:
            calls += group * (train_batches if "train" in group[0] else eval_batches)
            group = []
        if hook:
            calls.append(hook)
    return calls
