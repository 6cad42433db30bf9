"""How `torchstrap runs` and `torchstrap plot` show runs of several experiments with many differing keys: the
experiment of each run, a table that fits the terminal (short key names with a legend, long cells shortened,
blocks of columns), and a plot whose legend lies inside the figure with no matplotlib warning.

Real toy runs (test_runs' digits trainer, 2 epochs) in two experiments, each with a run named "base".
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from torchstrap.generator.cli import main
from torchstrap_runtime import launcher
from torchstrap_runtime import runs as R

import test_cluster_toy as toy
from test_runs import toy_config

LONG_FOLDER = "/scratch/a/rather/long/cluster/path/for/the/logs/of/sweep{}/%j"


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    """vision-idea/runs/{base,run0,run1} and other-idea/runs/base, differing in six keys."""
    root = tmp_path_factory.mktemp("experiments")
    assert launcher.run_training(toy_config(root / "other-idea" / "runs", "base", 0.02, 0), toy.TRAINER)["finished"]
    assert launcher.run_training(toy_config(root / "vision-idea" / "runs", "base", 0.1, 0), toy.TRAINER)["finished"]
    for i, (lr, seed) in enumerate([(0.1, 1), (0.05, 0)]):
        config = toy_config(root / "vision-idea" / "runs", f"run{i}", lr, seed, optimizer={"weight_decay": 1e-4},
                            slurm={"job_name": f"a-rather-long-job-name-for-the-sweep-{str(i) * 40}",
                                   "folder": LONG_FOLDER.format(i)},
                            criterion={"params": {"label_smoothing": 0.1 * (i + 1)}})
        assert launcher.run_training(config, toy.TRAINER)["finished"]
    return root


def runs_cli(capsys, monkeypatch, columns: int, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["runs", *argv]) == 0
    return capsys.readouterr().out


def test_each_row_names_its_experiment(experiments):
    rows = R.runs_table(R.load_runs([experiments / "other-idea" / "runs", experiments / "vision-idea" / "runs"]))
    assert [(row["experiment"], row["run"]) for row in rows] == [
        ("other-idea", "base"), ("vision-idea", "base"), ("vision-idea", "run0"), ("vision-idea", "run1")]
    assert list(rows[0])[:2] == ["experiment", "run"]
    single = R.runs_table(R.load_runs([experiments / "vision-idea" / "runs"]))
    assert "experiment" not in single[0]
    groups = R.group_rows(rows, ["training.seed"])
    assert [g["experiment"] for g in groups] == ["other-idea", "vision-idea", "vision-idea", "vision-idea"]


@pytest.mark.parametrize("columns", [80, 100, 140])
def test_table_fits_the_terminal_with_a_legend(experiments, capsys, monkeypatch, columns):
    out = runs_cli(capsys, monkeypatch, columns, str(experiments / "other-idea" / "runs"),
                   str(experiments / "vision-idea" / "runs"))
    assert max(len(line) for line in out.splitlines()) <= columns, out
    legend = dict(line.split(" = ") for line in out.split("\n\n")[-1].splitlines())
    assert legend["lr"] == "optimizer.lr" and legend["job_name"] == "slurm.job_name"
    assert legend["seed"] == "training.seed" and legend["params"] == "criterion.params"
    for name in ("other-idea", "vision-idea", "run0", "run1", "0.02", "0.05", "finished"):
        assert name in out
    blocks = out.split("\n\n")[:-1]
    for block in blocks:                       # each block begins with the run's own columns
        assert block.splitlines()[0].split()[:2] == ["experiment", "run"]
        assert len(block.splitlines()) == 5
    # a shortened path keeps its end
    assert "sweep1/%j" in out and "…" in out


def test_a_wide_terminal_shows_the_whole_table(experiments, capsys, monkeypatch):
    out = runs_cli(capsys, monkeypatch, 1000, str(experiments / "other-idea" / "runs"),
                   str(experiments / "vision-idea" / "runs"))
    lines = out.strip().splitlines()
    assert len(lines) == 5 and " = " not in out and "…" not in out
    assert "optimizer.lr" in lines[0] and LONG_FOLDER.format(1) in out
    monkeypatch.delenv("COLUMNS")              # printed to a pipe or a file: the whole table
    assert main(["runs", str(experiments / "other-idea" / "runs"), str(experiments / "vision-idea" / "runs")]) == 0
    assert capsys.readouterr().out == out
    markdown = runs_cli(capsys, monkeypatch, 40, str(experiments / "other-idea" / "runs"),
                        str(experiments / "vision-idea" / "runs"), "--format", "markdown")
    assert LONG_FOLDER.format(1) in markdown and "| experiment | run |" in markdown


def test_short_names_stay_unambiguous():
    assert R.short_names(["optimizer.lr", "data.seed", "training.seed", "model.name", "criterion.name"]) == {
        "optimizer.lr": "lr", "data.seed": "data.seed", "training.seed": "training.seed",
        "model.name": "model.name", "criterion.name": "criterion.name"}
    assert R.short_names(["a.b.c", "x.b.c", "a.d"]) == {"a.b.c": "a.b.c", "x.b.c": "x.b.c", "a.d": "d"}


def test_plot_legend_fits_without_a_warning(experiments, tmp_path, capsys):
    import matplotlib.image

    from torchstrap_runtime.plots import curve_labels, plot_runs

    runs = R.load_runs([experiments / "other-idea" / "runs", experiments / "vision-idea" / "runs"])
    out = tmp_path / "runs.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # matplotlib's "Tight layout not applied" would fail here
        plot_runs(runs, "val_top1", out=out, fold=["training.seed"])
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width == 800 and height > 500        # grown to hold the legend below the axes
    labels, legend = curve_labels(runs, [k for k in R.differing_keys(runs) if k != "training.seed"], True)
    assert labels[0].startswith("other-idea, ") and "lr=0.02" in labels[0]
    assert "lr = optimizer.lr" in legend and all(len(line) <= 100 for label in labels for line in label.splitlines())
    assert main(["plot", str(experiments / "vision-idea" / "runs"), "--out", str(tmp_path / "cli.png")]) == 0
    captured = capsys.readouterr()
    assert "Tight layout" not in captured.err and (tmp_path / "cli.png").stat().st_size > 10_000


def test_experiments_of_the_same_name_show_their_folders(experiments, tmp_path):
    import shutil

    for place in ("lab", "home"):
        shutil.copytree(experiments / "vision-idea" / "runs" / "base", tmp_path / place / "idea" / "runs" / "base")
    rows = R.runs_table(R.load_runs([tmp_path / "home" / "idea" / "runs", tmp_path / "lab" / "idea" / "runs"]))
    assert [row["experiment"] for row in rows] == [str((tmp_path / p / "idea").resolve()) for p in ("home", "lab")]
