"""`torchstrap runs --compare` / `plot --compare` and `torchstrap_runtime.runs.compare` on real toy runs.

Two learning rates x four seeds of the toy digits trainer (2 epochs, in-process): seed 3 of lr 0.05 is never
run (lr 0.1's seed 3 has no partner) and lr 0.05's seed 4 is preempted after epoch 0 (unfinished). Every
statistic is checked against scipy applied here to the values read back from the logs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from torchstrap.generator.cli import main
from torchstrap_runtime import launcher
from torchstrap_runtime import runs as R
from torchstrap_runtime.loggers import read_log

import test_cluster_toy as toy
from test_runs import toy_config

A, B = "optimizer.lr=0.1", "optimizer.lr=0.05"
PAIRED_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def runs_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    grid = [(0.1, seed) for seed in (0, 1, 2, 3)] + [(0.05, seed) for seed in PAIRED_SEEDS]
    for lr, seed in grid:
        assert launcher.run_training(toy_config(folder, f"lr{lr}-s{seed}", lr, seed), toy.TRAINER)["finished"]
    stopped = toy_config(folder, "lr0.05-s4", 0.05, 4, toy={"signal_at_steps": [30]})   # USR2 in epoch 1
    assert not launcher.run_training(stopped, toy.TRAINER)["finished"]
    return folder


def logged(run_dir: Path, metric: str = "val_top1") -> list[float]:
    return [r[metric] for r in read_log(run_dir) if r.get("kind") == "epoch"]


def by_hand_metric(folder: Path, metric: str, pick) -> tuple[list[float], list[float]]:
    """The A and B values of the paired seeds, each run's epoch values reduced by `pick` (max, min, the last)."""
    return ([pick(logged(folder / f"lr0.1-s{s}", metric)) for s in PAIRED_SEEDS],
            [pick(logged(folder / f"lr0.05-s{s}", metric)) for s in PAIRED_SEEDS])


def by_hand(folder: Path, pick) -> tuple[list[float], list[float]]:
    return by_hand_metric(folder, "val_top1", pick)


def power_by_hand(n: int, effect: float) -> float:
    critical, noncentrality = stats.t.ppf(0.975, n - 1), effect * math.sqrt(n)
    opposite = stats.nct.cdf(-critical, n - 1, noncentrality)   # scipy: nan when it underflows
    return stats.nct.sf(critical, n - 1, noncentrality) + (0.0 if math.isnan(opposite) else opposite)


def check_statistics(result: R.MetricComparison, a: list[float], b: list[float]) -> None:
    diffs = [x - y for x, y in zip(a, b)]
    n, mean, sd = len(diffs), statistics.mean(diffs), statistics.stdev(diffs)
    assert result.n_pairs == n == 3
    assert [p["a"] for p in result.pairs] == a and [p["b"] for p in result.pairs] == b
    assert result.mean_difference == pytest.approx(mean) and result.sd_difference == pytest.approx(sd)
    assert result.mean_a == pytest.approx(statistics.mean(a)) and result.mean_b == pytest.approx(statistics.mean(b))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert (result.ci_low, result.ci_high) == pytest.approx((mean - half, mean + half))
    assert result.paired_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert result.paired_t == pytest.approx(stats.ttest_rel(a, b).statistic)
    assert result.wilcoxon_p == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert result.welch_p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    needed = result.seeds_for_80_power
    effect = abs(mean) / sd
    assert power_by_hand(needed, effect) >= 0.8 and (needed == 2 or power_by_hand(needed - 1, effect) < 0.8)


def test_compare_matches_scipy_on_the_logged_values(runs_folder):
    runs = R.load_runs([runs_folder])
    comparison = R.compare(runs, A, B, paired_by="training.seed", metric="val_top1")
    assert (comparison.value, comparison.mode) == ("best", "max")
    result, = comparison.metrics
    a, b = by_hand(runs_folder, max)
    assert a != b, "the toy's two learning rates give the same accuracies: the test would not tell them apart"
    check_statistics(result, a, b)
    assert [(p["paired"], p["run_a"], p["run_b"]) for p in result.pairs] == \
        [(s, f"lr0.1-s{s}", f"lr0.05-s{s}") for s in PAIRED_SEEDS]
    # the last epoch's values with final=True; several metrics at once (the paths are loaded as runs)
    final = R.compare([runs_folder], A, B, metric=["val_top1", "train_loss"], final=True, mode="min")
    check_statistics(final.metrics[0], *by_hand(runs_folder, lambda v: v[-1]))
    loss = [[logged(runs_folder / f"lr{lr}-s{s}", "train_loss")[-1] for s in PAIRED_SEEDS] for lr in (0.1, 0.05)]
    check_statistics(final.metrics[1], *loss)
    # each metric with its own best: the best val_loss is its minimum
    both = R.compare(runs, A, B, metric=["val_top1", "val_loss:min"])
    assert [(m.metric, m.mode) for m in both.metrics] == [("val_top1", "max"), ("val_loss", "min")]
    check_statistics(both.metrics[0], a, b)
    check_statistics(both.metrics[1], *by_hand_metric(runs_folder, "val_loss", min))


def test_missing_partner_and_unfinished_run_are_listed(runs_folder):
    comparison = R.compare(R.load_runs([runs_folder]), A, B)
    assert comparison.unpaired == [{"run": "lr0.1-s3", "setting": A, "training.seed": 3,
                                    "reason": "no optimizer.lr=0.05 run has training.seed=3"}]
    assert comparison.unfinished == [{"run": "lr0.05-s4", "setting": B, "training.seed": 4, "status": "preempted",
                                      "epochs": 1}]
    # a partner that exists but is unfinished is named as the reason
    runs = [run for run in R.load_runs([runs_folder]) if run.run_id != "lr0.05-s1"]
    for run in runs:
        if run.run_id == "lr0.05-s4":
            run.params["training.seed"] = 1
    comparison = R.compare(runs, A, B)
    assert {"run": "lr0.1-s1", "setting": A, "training.seed": 1,
            "reason": "its partner lr0.05-s4 is preempted"} in comparison.unpaired
    assert comparison.metrics[0].n_pairs == 2


def test_two_runs_of_one_setting_with_one_seed_are_refused(runs_folder):
    runs = R.load_runs([runs_folder])
    twin = dataclasses.replace(next(r for r in runs if r.run_id == "lr0.1-s0"), path=runs_folder / "lr0.1-s0-again")
    with pytest.raises(R.RunsError, match=r"runs lr0.1-s0, lr0.1-s0-again have optimizer.lr=0.1 and the same "
                                          r"training.seed \(0\): keep one per training.seed with --filter"):
        R.compare(runs + [twin], A, B)


def test_seeds_for_power_matches_the_published_figures():
    """Paired t, two-sided alpha 0.05, power 0.8: dz = 0.5 needs 34 pairs, dz = 0.8 needs 15 (G*Power)."""
    assert R.seeds_for_power(0.5, 1.0) == 34 and R.seeds_for_power(-0.8, 1.0) == 15
    assert R.seeds_for_power(0.0, 1.0) is None and R.seeds_for_power(0.1, 0.0) == 2


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_json_markdown(runs_folder, capsys):
    base = ["runs", str(runs_folder), "--compare", A, B, "--paired-by", "training.seed", "--metric", "val_top1"]
    code, out, _ = cli(capsys, *base, "--format", "json")
    data = json.loads(out)
    a, b = by_hand(runs_folder, max)
    assert code == 0 and data["metrics"][0]["n_pairs"] == 3
    assert data["metrics"][0]["mean_difference"] == pytest.approx(statistics.mean(x - y for x, y in zip(a, b)))
    assert [r["run"] for r in data["unpaired"]] == ["lr0.1-s3"]
    assert [r["run"] for r in data["unfinished"]] == ["lr0.05-s4"]
    code, out, _ = cli(capsys, *base, "--format", "markdown")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("**A: optimizer.lr=0.1") and "best epoch's value" in lines[0]
    assert "| metric | pairs | mean A | mean B | A - B | 95% CI | paired t p | Wilcoxon p | Welch p (unpaired) |" in out
    assert any(line.startswith("- unpaired: lr0.1-s3") for line in lines)
    assert any(line.startswith("- unfinished: lr0.05-s4") and "preempted" in line for line in lines)
    code, out, _ = cli(capsys, *base, "--final")
    assert code == 0 and "the last epoch's value" in out and "left out:" in out and "lr0.1-s3" in out
    assert f"{statistics.mean(x - y for x, y in zip(*by_hand(runs_folder, lambda v: v[-1]))):.4g}" in out


@pytest.mark.parametrize("argv, message", [
    (["--compare", A], "--compare needs exactly two KEY=VALUE settings"),
    (["--compare", A, B, "optimizer.lr=0.02"], "--compare needs exactly two KEY=VALUE settings"),
    (["--compare", A, "0.05"], "--compare expects two KEY=VALUE settings"),
    (["--compare", A, "optimizer.lrr=0.05"], "--compare: unknown key 'optimizer.lrr'"),
    (["--compare", A, B, "--paired-by", "training.sed"], "--paired-by: unknown key 'training.sed'"),
    (["--compare", A, B, "--metric", "val_top7"], "no run logs the metric 'val_top7'"),
    (["--compare", A, "optimizer.lr=0.3"], "no run has optimizer.lr=0.3"),
    (["--compare", A, B, "--filter", "training.seed=0"], "1 pair(s) of finished runs"),
    (["--compare", A, B, "--metric", "val_loss:mn"], "the suffix after ':' must be max or min"),
    (["--compare", A, B, "--group-by", "training.seed"], "--group-by does not apply to --compare"),
])
def test_bad_input_is_one_sentence_and_exit_2(runs_folder, capsys, argv, message):
    for command in ("runs", "plot"):
        code, out, err = cli(capsys, command, str(runs_folder), *argv)
        assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_plot_compare_writes_a_png(runs_folder, tmp_path, capsys):
    out = tmp_path / "compare.png"
    code, printed, _ = cli(capsys, "plot", str(runs_folder), "--compare", A, B, "--metric", "val_top1",
                           "--out", str(out))
    assert code == 0 and printed.strip() == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_sort_by_the_shown_column_over_groups(runs_folder, capsys):
    """`--group-by training.seed --sort=-best_val_top1` (the README's example) sorts by the groups' means."""
    code, out, err = cli(capsys, "runs", str(runs_folder), "--group-by", "training.seed", "--sort=-best_val_top1",
                         "--filter", "status=finished", "--format", "json")
    groups = json.loads(out)
    assert code == 0, err
    assert [g["optimizer.lr"] for g in groups] == [g["optimizer.lr"] for g in sorted(
        groups, key=lambda g: g["best_val_top1_mean"], reverse=True)]
    assert len(groups) == 2 and {g["count"] for g in groups} == {3, 4}
    code, out, _ = cli(capsys, "runs", str(runs_folder), "--group-by", "training.seed", "--sort=best_val_top1")
    assert code == 0 and "best_val_top1" in out.splitlines()[0]
