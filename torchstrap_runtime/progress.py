"""What a run prints on rank 0: tqdm bars while it trains and evaluates, a line per epoch, a summary at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def progress_bar(description: str, total: int | None, initial: int = 0):
    """A tqdm bar that leaves nothing behind when closed."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True, mininterval=0.5)


def print_epoch_line(record: dict[str, Any], epoch: int, epochs: int) -> None:
    """`epoch E/N: ...` under the progress bars: the record's floats, accuracies and shares in percent."""
    from tqdm.auto import tqdm

    parts = [f"{k} {100 * v:.2f}%" if "top" in k or "share" in k else f"{k} {v:.4g}"
             for k, v in record.items() if isinstance(v, float)]
    tqdm.write(f"epoch {epoch + 1}/{epochs}: " + ", ".join(parts))


def print_run_summary(record: dict[str, Any], epoch: int, run_dir: Path, best: tuple | None = None) -> None:
    """The final metrics, the best epoch (`best`: monitored key, value, epoch index, checkpoint) and the run folder.
    `epoch` is the number of epochs run: epochs are shown numbered from 1, the log's 0-based `epoch` plus one."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
    print(f"epoch {epoch}: {metrics}")
    if "val_top1" in record:
        print(f"final validation top-1 accuracy: {100 * record['val_top1']:.2f}%")
    if best is not None:
        monitor, value, best_epoch, path = best
        print(f"best {monitor}: {value:.4f} at epoch {int(best_epoch) + 1} ({path})")
    print(f"run folder: {run_dir}")
