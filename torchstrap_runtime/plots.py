"""`curves.png`: training loss and validation accuracy per epoch, drawn from a run's `log.jsonl`."""

from __future__ import annotations

import textwrap
from pathlib import Path

from .loggers import read_log
from .run_folder import CURVES_FILE

EPOCH_AXIS = "epoch (from 0)"   # the x label wherever epochs are plotted: numbered as log.jsonl and the console do


def epoch_points(epochs: list[dict], key: str, scale: float = 1.0) -> list[tuple[int, float]]:
    """(epoch, value) of each epoch record holding `key`: the epoch as log.jsonl and the console number it, from 0."""
    return [(r["epoch"], scale * r[key]) for r in epochs if isinstance(r.get(key), (int, float))]


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `<run_dir>/curves.png` (or `out`): train/val loss and val top-1/top-5 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / CURVES_FILE
    epochs = [r for r in read_log(run_dir) if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        points = epoch_points(epochs, key)
        if points:
            ax_loss.plot(*zip(*points), marker="o", label=label)
    for key, label in (("val_top1", "val top-1"), ("val_top5", "val top-5"), ("train_top1", "train top-1")):
        points = epoch_points(epochs, key, scale=100)
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=label)
    ax_loss.set(xlabel=EPOCH_AXIS, ylabel="loss", title="loss")
    ax_acc.set(xlabel=EPOCH_AXIS, ylabel="accuracy (%)", title="accuracy")
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


def plot_runs(runs: list, metric: str = "val_top1", x: str = "epoch", out: str | Path = "runs.png",
              fold: list[str] | None = None, title: str | None = None) -> Path:
    """Overlay `metric` of several runs (`torchstrap_runtime.runs.Run`s) in one PNG. Runs that differ only in
    the `fold` keys (e.g. training.seed) make one curve: their mean, with a band of ± one standard deviation.
    Curves are labelled by the hyper-parameters that differ between the runs (and by experiment when the runs come
    from several), in a legend below the axes that the figure grows to hold (`curve_labels`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .runs.folders import RunsError, _key, differing_keys, experiment_names, read_curve

    keys = [k for k in differing_keys(runs) if k not in (fold or [])]
    several = len({run.path.resolve().parent for run in runs}) > 1
    experiments = experiment_names(runs)
    groups: dict[str, list] = {}
    for run in runs:
        experiment = experiments[run.path] if several else None
        groups.setdefault(_key([experiment] + [run.params.get(k) for k in keys]), []).append(run)
    labels, key_legend = curve_labels([members[0] for members in groups.values()], keys, several)
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    drawn = 0
    for members, label in zip(groups.values(), labels):
        curves = [read_curve(run.path, metric, x) for run in members]
        curves = [(np.asarray(xs, float), np.asarray(ys, float)) for xs, ys in curves if xs]
        if not curves:
            continue
        if len(members) > 1:
            label += f" (n={len(curves)})"
        grid = np.unique(np.concatenate([xs for xs, _ in curves]))
        # each curve on the common grid (interpolated inside its own range, missing outside it)
        values = np.full((len(curves), len(grid)), np.nan)
        for i, (xs, ys) in enumerate(curves):
            order = np.argsort(xs, kind="stable")
            inside = (grid >= xs.min()) & (grid <= xs.max())
            values[i, inside] = np.interp(grid[inside], xs[order], ys[order])
        count = np.sum(~np.isnan(values), axis=0)
        mean = np.nanmean(values, axis=0)
        line, = ax.plot(grid, mean, marker="o" if len(grid) <= 50 else None, markersize=3, label=label)
        if len(curves) > 1:
            std = np.array([np.std(col[~np.isnan(col)], ddof=1) if n > 1 else 0.0 for col, n in zip(values.T, count)])
            ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise RunsError(f"no run logs the metric {metric!r}")
    ax.set(xlabel={"epoch": EPOCH_AXIS, "step": "step", "time": "wall time (s)"}[x], ylabel=metric,
           title=title or f"{metric} of {len(runs)} run(s)" + (f", mean ± std over {', '.join(fold)}" if fold else ""))
    if x == "epoch":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    shown = [line.get_label() for line in ax.lines]
    longest = max(len(line) for label in shown for line in label.splitlines())
    columns = max(1, min(len(shown), LEGEND_CHARS // (longest + 6)))
    rows = sum(max(len(label.splitlines()) for label in shown[i:i + columns]) for i in range(0, len(shown), columns))
    title = "\n".join(textwrap.wrap("; ".join(key_legend), LEGEND_CHARS)) or None
    fig.set_figheight(5 + 0.2 * (rows + (title or "").count("\n") + bool(title)))
    fig.legend(loc="outside lower center", ncols=columns, fontsize="small", title=title, title_fontsize="small")
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


LEGEND_CHARS = 110     # characters of small text across the figure below the axes


def curve_labels(runs: list, keys: list[str], with_experiment: bool = False) -> tuple[list[str], list[str]]:
    """One label per run (a curve): its values of `keys` under their short names (`lr=0.1`, long values shortened,
    lines wrapped to fit below the axes), after its experiment when asked; and the legend of the short names
    (`lr = optimizer.lr`)."""
    from .runs.folders import experiment_names
    from .runs.table import _cell, _shorten, short_names

    names, experiments = short_names(keys), experiment_names(runs)
    labels = []
    for run in runs:
        parts = [_shorten(experiments[run.path], 40)] if with_experiment else []
        parts += [f"{names[k]}={_shorten(_cell(run.params.get(k)), 40)}" for k in keys]
        labels.append("\n".join(textwrap.wrap(", ".join(parts), LEGEND_CHARS - 10)) or run.run_id)
    return labels, [f"{names[k]} = {k}" for k in keys if names[k] != k]


def plot_comparison(comparison, out: str | Path = "compare.png") -> Path:
    """Draw a paired comparison (`torchstrap_runtime.runs.compare`): per metric, one line per pair (seed) from
    its value under A to its value under B, and beside it the mean difference A - B with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = comparison.metrics
    fig, axes = plt.subplots(len(metrics), 2, figsize=(9, 4.2 * len(metrics)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]})
    for (ax_pairs, ax_diff), result in zip(axes, metrics):
        colors = plt.get_cmap("tab10" if result.n_pairs <= 10 else "viridis")
        for i, pair in enumerate(result.pairs):
            color = colors(i % 10 if result.n_pairs <= 10 else i / max(result.n_pairs - 1, 1))
            ax_pairs.plot([0, 1], [pair["a"], pair["b"]], marker="o", color=color, alpha=0.8,
                          label=f"{comparison.paired_by.split('.')[-1]}={pair['paired']}")
        ax_pairs.plot([0, 1], [result.mean_a, result.mean_b], color="black", linewidth=2.5, label="mean")
        ax_pairs.set_xticks([0, 1], [f"A: {comparison.a}", f"B: {comparison.b}"])
        ax_pairs.set_xlim(-0.3, 1.3)
        best = f" ({result.mode})" if comparison.value == "best" else ""
        ax_pairs.set(ylabel=f"{comparison.value} {result.metric}{best}",
                     title=f"{result.metric}: {result.n_pairs} pairs by {comparison.paired_by}")
        ax_pairs.grid(alpha=0.3)
        if result.n_pairs <= 12:
            ax_pairs.legend(fontsize="small", loc="best", framealpha=0.6)
        low = result.ci_low if result.ci_low is not None else result.mean_difference
        high = result.ci_high if result.ci_high is not None else result.mean_difference
        ax_diff.errorbar([0], [result.mean_difference], yerr=[[result.mean_difference - low],
                         [high - result.mean_difference]], fmt="o", color="black", capsize=6)
        ax_diff.scatter([0.25] * result.n_pairs, [p["difference"] for p in result.pairs], color="gray", s=12,
                        alpha=0.7)
        ax_diff.axhline(0, color="red", linewidth=1, linestyle="--")
        ax_diff.set_xticks([0, 0.25], ["mean", "pairs"])
        ax_diff.set_xlim(-0.4, 0.6)
        p = result.paired_p
        ax_diff.set(ylabel="A - B", title="A - B, 95% CI" + (f"\npaired t p={p:.2g}" if p is not None else ""))
        ax_diff.grid(alpha=0.3)
    left_out = [f"{r['run']} (no partner)" for r in comparison.unpaired] + \
        [f"{r['run']} ({r['status']})" for r in comparison.unfinished]
    if left_out:
        shown = ", ".join(left_out[:8]) + (f" and {len(left_out) - 8} more" if len(left_out) > 8 else "")
        fig.text(0.01, 0.005, f"left out: {shown}", fontsize="small", color="dimgray", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if left_out else 0, 1, 1))
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
