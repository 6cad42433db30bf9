"""What a run prints on rank 0: tqdm bars while it trains and evaluates, a line per epoch, a summary at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def progress_bar(description: str, total: int | None, initial: int = 0):
    """A tqdm bar that leaves nothing behind when closed."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True, mininterval=0.5)


def print_epoch_line(record: dict[str, Any], epoch: int, epochs: int) -> None:
    """`epoch E/LAST: ...` under the progress bars (E and LAST = `epochs` - 1 counted from 0, like log.jsonl):
    the record's floats, accuracies and shares in percent."""
    from tqdm.auto import tqdm

    parts = [f"{k} {100 * v:.2f}%" if "top" in k or "share" in k else f"{k} {v:.4g}"
             for k, v in record.items() if isinstance(v, float)]
    tqdm.write(f"epoch {epoch}/{epochs - 1}: " + ", ".join(parts))


def print_run_summary(record: dict[str, Any], epochs_run: int, run_dir: Path, best: tuple | None = None) -> None:
    """The final metrics, the best epoch (`best`: monitored key, value, epoch, checkpoint) and the run folder.
    Epochs are shown as log.jsonl numbers them, from 0: after `epochs_run` epochs the last is `epochs_run - 1`."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
    print(f"epoch {epochs_run - 1}: {metrics}" if epochs_run else f"untrained: {metrics}")
    if "val_top1" in record:
        print(f"final validation top-1 accuracy: {100 * record['val_top1']:.2f}%")
    if best is not None:
        monitor, value, best_epoch, path = best
        print(f"best {monitor}: {value:.4f} at epoch {int(best_epoch)} ({path})")
    print(f"run folder: {run_dir}")
