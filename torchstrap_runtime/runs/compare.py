"""Paired comparisons of two settings over seeds: differences, confidence interval, paired and unpaired tests,
the seeds needed for power."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .folders import Run, RunsError, _is_number, _key, load_runs
from .table import _cell, _matches, _sort_value, format_rows, mean_std, parse_filter


COMPLETE = ("finished", "stopped early")   # statuses whose metric values are a run's outcome
ALPHA, POWER = 0.05, 0.80


@dataclass
class MetricComparison:
    """One metric compared between settings A and B over the pairs of runs that share the paired-by value.

    `pairs`: `{"paired": value, "run_a", "run_b", "a", "b", "difference"}` each (difference = a - b).
    `missing_values`: the complete runs that never logged the metric (not in `pairs`).
    The statistics are None where they are undefined (every difference equal makes the t-test's SD 0)."""

    metric: str
    mode: str                                    # "max" or "min": what the best epoch of a run is for this metric
    pairs: list[dict[str, Any]]
    missing_values: list[str]
    mean_a: float
    mean_b: float
    mean_difference: float
    sd_difference: float
    ci_low: float | None
    ci_high: float | None
    paired_t: float | None
    paired_p: float | None
    wilcoxon_p: float | None
    welch_t: float | None
    welch_p: float | None
    seeds_for_80_power: int | None

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)


@dataclass
class Comparison:
    """`compare`'s result: the settings, how a run's value is taken, the runs left out and why, one
    `MetricComparison` per metric. `as_dict()` is what `--format json` prints."""

    a: str
    b: str
    paired_by: str
    value: str                                   # "best" (max/min over epochs, per `mode`) or "final"
    mode: str
    metrics: list[MetricComparison]
    unpaired: list[dict[str, Any]]               # complete runs without a complete partner: run, setting, reason
    unfinished: list[dict[str, Any]]             # runs of A or B that are not complete: run, setting, status, epochs

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        for metric, original in zip(out["metrics"], self.metrics):
            metric["n_pairs"] = original.n_pairs
        return out


def parse_setting(spec: str, runs: list[Run]) -> tuple[str, Any]:
    """`optimizer.lr=0.1` -> ("optimizer.lr", 0.1), the key checked against the runs' configs."""
    if "=" not in spec:
        raise RunsError(f"--compare expects two KEY=VALUE settings such as optimizer.lr=0.1, got {spec!r}")
    key, value = parse_filter(spec)
    if not any(key in run.params for run in runs):
        raise RunsError(f"--compare: unknown key {key!r} (a config key of the runs, such as optimizer.lr)")
    return key, value


def compare(runs: Iterable[Run | str | Path], a: str, b: str, paired_by: str = "training.seed",
            metric: str | Iterable[str] = "val_top1", mode: str = "max", final: bool = False) -> Comparison:
    """Compare setting `a` with setting `b` (`"optimizer.lr=0.1"`) over runs paired by `paired_by`.

    The runs with setting A and the runs with setting B that share a `paired_by` value (a seed: the same data
    order and augmentations) make a pair. A run's value is its best epoch's value of `metric` (max or min per
    `mode`; a metric written `val_loss:min` has its own), or with `final=True` its last epoch's. Runs of A or B
    that are not finished are listed in `unfinished`, complete runs whose partner is missing or unfinished in
    `unpaired`: none is dropped silently. Per metric, over the n pairs' differences d = A - B:

    - mean difference and its 95 % confidence interval, mean ± t(0.975, n-1) · sd / √n;
    - the paired t-test (`scipy.stats.ttest_rel`) and the Wilcoxon signed-rank test (`scipy.stats.wilcoxon`,
      exact for small n, zero differences dropped) p-values, two-sided;
    - beside them the unpaired Welch t-test (`scipy.stats.ttest_ind(equal_var=False)`) on the same runs' values,
      which ignores the pairing: the gap between the two shows what pairing by seed gains;
    - `seeds_for_80_power`: the smallest number of pairs n ≥ 2 for which a two-sided paired t-test at α = 0.05
      detects the observed effect dz = mean(d) / sd(d) with probability ≥ 0.8, the power being computed exactly
      from the noncentral t distribution, P(|T| > t(0.975, n-1)) with T ~ t(n-1, noncentrality dz·√n)
      (None when the mean difference is 0; 2 when every difference is equal and non-zero).

    `runs`: `Run`s (`load_runs`) or run folders / folders of runs. Bad input raises `RunsError`."""
    runs = list(runs)
    if not all(isinstance(r, Run) for r in runs):
        runs = load_runs(runs)
    if mode not in ("max", "min"):
        raise RunsError(f"mode must be max or min, got {mode!r}")
    metrics = []
    for spec in [metric] if isinstance(metric, str) else list(metric):
        name, _, own_mode = spec.partition(":")
        if own_mode not in ("", "max", "min"):
            raise RunsError(f"--metric {spec!r}: the suffix after ':' must be max or min")
        metrics.append((name, own_mode or mode))
    (key_a, want_a), (key_b, want_b) = parse_setting(a, runs), parse_setting(b, runs)
    if key_a == key_b and _matches(want_a, want_b):
        raise RunsError(f"--compare needs two different settings, got {a!r} twice")
    if not any(paired_by in run.params for run in runs):
        raise RunsError(f"--paired-by: unknown key {paired_by!r} (a config key of the runs, such as training.seed)")
    logged = {k for run in runs for r in run.epochs for k in r}
    for name, _ in metrics:
        if name not in logged:
            shown = sorted(k for k in logged if k not in ("epoch", "step", "time", "kind"))
            raise RunsError(f"no run logs the metric {name!r} (epoch metrics: {', '.join(shown) or 'none'})")
    sides: dict[str, dict[str, list[Run]]] = {"A": {}, "B": {}}
    for run in runs:
        in_a, in_b = _matches(run.params.get(key_a), want_a), _matches(run.params.get(key_b), want_b)
        if in_a and in_b:
            raise RunsError(f"run {run.run_id} has both {a} and {b}: compare settings no run shares")
        if in_a or in_b:
            sides["A" if in_a else "B"].setdefault(_key(run.params.get(paired_by)), []).append(run)
    for side, spec in (("A", a), ("B", b)):
        if not sides[side]:
            values = sorted({_cell(run.params.get(key)) for run in runs
                             for key in [key_a if side == "A" else key_b] if key in run.params})
            raise RunsError(f"--compare: no run has {spec} (values here: {', '.join(values)})")
        for members in sides[side].values():
            if len(members) > 1:
                raise RunsError(f"runs {', '.join(r.run_id for r in members)} have {spec} and the same {paired_by} "
                                f"({_cell(members[0].params.get(paired_by))}): keep one per {paired_by} with --filter")
    labels = {"A": a, "B": b}
    unfinished = [{"run": run.run_id, "setting": labels[side], paired_by: run.params.get(paired_by),
                   "status": run.status, "epochs": run.epochs_done}
                  for side in "AB" for members in sides[side].values() for run in members
                  if run.status not in COMPLETE]
    complete = {side: {k: m[0] for k, m in sides[side].items() if m[0].status in COMPLETE} for side in "AB"}
    unpaired = []
    for side, other in (("A", "B"), ("B", "A")):
        for k, run in complete[side].items():
            if k in complete[other]:
                continue
            partner = sides[other].get(k)
            reason = (f"its partner {partner[0].run_id} is {partner[0].status}" if partner else
                      f"no {labels[other]} run has {paired_by}={_cell(run.params.get(paired_by))}")
            unpaired.append({"run": run.run_id, "setting": labels[side], paired_by: run.params.get(paired_by),
                             "reason": reason})
    matched = [(complete["A"][k], complete["B"][k]) for k in complete["A"] if k in complete["B"]]
    matched.sort(key=lambda pair: _sort_value(pair[0].params.get(paired_by)))
    left_out = "; ".join(f"{r['run']} ({r['reason']})" for r in unpaired) + "; " * bool(unpaired and unfinished) \
        + "; ".join(f"{r['run']} ({r['status']})" for r in unfinished)
    results = [_compare_metric(matched, name, paired_by, own_mode, final, a, b, left_out)
               for name, own_mode in metrics]
    return Comparison(a=a, b=b, paired_by=paired_by, value="final" if final else "best", mode=mode,
                      metrics=results, unpaired=unpaired, unfinished=unfinished)


def run_value(run: Run, metric: str, mode: str = "max", final: bool = False) -> float | None:
    """A run's value of `metric`: its best epoch's (max or min per `mode`) or, with `final`, its last epoch's."""
    values = [float(r[metric]) for r in run.epochs if r.get("kind") == "epoch" and _is_number(r.get(metric))]
    values = values or run.metric(metric)     # an evaluation-only run logs `eval` lines
    if not values:
        return None
    return values[-1] if final else (max(values) if mode == "max" else min(values))


def _compare_metric(matched: list[tuple[Run, Run]], metric: str, paired_by: str, mode: str, final: bool,
                    a: str, b: str, left_out: str) -> MetricComparison:
    import warnings

    from scipy import stats

    pairs, missing = [], []
    for run_a, run_b in matched:
        value_a, value_b = run_value(run_a, metric, mode, final), run_value(run_b, metric, mode, final)
        missing += [r.run_id for r, v in ((run_a, value_a), (run_b, value_b)) if v is None]
        if value_a is not None and value_b is not None:
            pairs.append({"paired": run_a.params.get(paired_by), "run_a": run_a.run_id, "run_b": run_b.run_id,
                          "a": value_a, "b": value_b, "difference": value_a - value_b})
    n = len(pairs)
    if n < 2:
        raise RunsError(f"{metric}: {n} pair(s) of finished runs of {a} and {b} share a {paired_by}, a paired "
                        f"comparison needs at least 2" + (f" (left out: {left_out})" if left_out else ""))
    xs, ys = [p["a"] for p in pairs], [p["b"] for p in pairs]
    diffs = [p["difference"] for p in pairs]
    mean_d, sd_d = mean_std(diffs)
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd_d / math.sqrt(n)
    with warnings.catch_warnings():      # equal values: scipy warns and returns nan, shown as None
        warnings.simplefilter("ignore")
        paired = stats.ttest_rel(xs, ys)
        welch = stats.ttest_ind(xs, ys, equal_var=False)
        try:
            wilcoxon_p = float(stats.wilcoxon(xs, ys).pvalue)
        except ValueError:
            wilcoxon_p = None
    return MetricComparison(
        metric=metric, mode=mode, pairs=pairs, missing_values=missing, mean_a=mean_std(xs)[0],
        mean_b=mean_std(ys)[0],
        mean_difference=mean_d, sd_difference=sd_d, ci_low=mean_d - half, ci_high=mean_d + half,
        paired_t=_finite(paired.statistic), paired_p=_finite(paired.pvalue), wilcoxon_p=_finite(wilcoxon_p),
        welch_t=_finite(welch.statistic), welch_p=_finite(welch.pvalue),
        seeds_for_80_power=seeds_for_power(mean_d, sd_d))


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def paired_power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test with n pairs for the standardized effect dz = mean(d) / sd(d)."""
    from scipy import stats

    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    noncentrality = abs(effect) * math.sqrt(n)
    opposite = float(stats.nct.cdf(-critical, n - 1, noncentrality))   # nan (underflow) for a large effect
    return float(stats.nct.sf(critical, n - 1, noncentrality)) + (opposite if math.isfinite(opposite) else 0.0)


def seeds_for_power(mean_difference: float, sd_difference: float, power: float = POWER,
                    alpha: float = ALPHA) -> int | None:
    """The fewest pairs (≥ 2) whose two-sided paired t-test at `alpha` reaches `power` for this mean and SD of
    the differences (see `compare`); None for a zero mean difference."""
    if mean_difference == 0:
        return None
    if sd_difference == 0:
        return 2
    effect = abs(mean_difference) / sd_difference
    low, high = 1, 2                      # power grows with n: double, then bisect
    while paired_power(high, effect, alpha) < power:
        low, high = high, high * 2
        if high > 1 << 30:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if paired_power(mid, effect, alpha) < power else (low, mid)
    return high


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def format_comparison(comparison: Comparison, fmt: str = "table") -> str:
    """`table` (aligned text), `markdown` or `json`: the summary per metric, each pair, the runs left out."""
    if fmt == "json":
        return json.dumps(comparison.as_dict(), indent=2, default=str)
    if fmt not in ("table", "markdown"):
        raise RunsError(f"--format for --compare must be table, markdown or json, got {fmt!r}")
    c = comparison
    how = ("the last epoch's value of each run" if c.value == "final" else
           f"the best epoch's value of each run ({c.mode} over epochs; --final for the last epoch's)")
    summary = [{"metric": m.metric + (f" ({m.mode})" if c.value == "best" and m.mode != c.mode else ""),
                "pairs": m.n_pairs, "mean A": _cell(m.mean_a), "mean B": _cell(m.mean_b),
                "A - B": _cell(m.mean_difference),
                "95% CI": f"[{_cell(m.ci_low)}, {_cell(m.ci_high)}]",
                "paired t p": _p(m.paired_p), "Wilcoxon p": _p(m.wilcoxon_p), "Welch p (unpaired)": _p(m.welch_p),
                "seeds for 80% power": _cell(m.seeds_for_80_power)} for m in c.metrics]
    pair_tables = {m.metric: [{c.paired_by: _cell(p["paired"]), "run A": p["run_a"], "run B": p["run_b"],
                               f"{m.metric} A": _cell(p["a"]), f"{m.metric} B": _cell(p["b"]),
                               "A - B": _cell(p["difference"])} for p in m.pairs] for m in c.metrics}
    left_out = [f"unpaired: {r['run']} ({r['setting']}, {c.paired_by}={_cell(r[c.paired_by])}): {r['reason']}"
                for r in c.unpaired]
    left_out += [f"unfinished: {r['run']} ({r['setting']}, {c.paired_by}={_cell(r[c.paired_by])}): {r['status']}, "
                 f"{r['epochs']} epoch(s) logged" for r in c.unfinished]
    left_out += [f"no value of {m.metric}: {run}" for m in c.metrics for run in m.missing_values]
    heading = f"A: {c.a}  vs  B: {c.b}, paired by {c.paired_by}; {how}"
    if fmt == "markdown":
        parts = [f"**{heading}**", format_rows(summary, "markdown")]
        parts += [f"Pairs, {name}:\n\n" + format_rows(rows, "markdown") for name, rows in pair_tables.items()]
        if left_out:
            parts.append("\n".join(f"- {line}" for line in left_out))
        return "\n\n".join(parts)
    parts = [heading, format_rows(summary)]
    parts += [f"pairs, {name}:\n" + format_rows(rows) for name, rows in pair_tables.items()]
    if left_out:
        parts.append("left out:\n" + "\n".join(f"  {line}" for line in left_out))
    return "\n\n".join(parts)
