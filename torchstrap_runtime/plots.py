"""`curves.png`: training loss and validation accuracy per epoch, drawn from a run's `log.jsonl`."""

from __future__ import annotations

from pathlib import Path

from .loggers import read_log


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `<run_dir>/curves.png` (or `out`): train/val loss and val top-1/top-5 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    epochs = [r for r in read_log(run_dir) if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        points = [(r["epoch"] + 1, r[key]) for r in epochs if isinstance(r.get(key), (int, float))]
        if points:
            ax_loss.plot(*zip(*points), marker="o", label=label)
    for key, label in (("val_top1", "val top-1"), ("val_top5", "val top-5"), ("train_top1", "train top-1")):
        points = [(r["epoch"] + 1, 100 * r[key]) for r in epochs if isinstance(r.get(key), (int, float))]
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
