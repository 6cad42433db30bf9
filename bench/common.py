"""Shared helpers of the benchmarks: interleaved rounds, summary tables, JSON results, machine description.

Every benchmark measures its contenders in interleaved rounds (A B C, then C B A, ...), because the
machine is shared and noisy: absolute figures move, ratios measured side by side are what to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DATA_DIR = BENCH_DIR / "data"
PYTHON = sys.executable


@dataclass
class Summary:
    """Median and range of one contender's measurements (in `unit`)."""

    name: str
    unit: str
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def as_dict(self) -> dict:
        return {"name": self.name, "unit": self.unit, "median": self.median, "min": self.low,
                "max": self.high, "values": self.values}


def interleave(contenders: dict[str, Callable[[], float]], rounds: int, verbose: bool = True) -> dict[str, list[float]]:
    """Run each contender once per round, alternating the order every round; return all measurements."""
    names = list(contenders)
    values: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            value = contenders[name]()
            values[name].append(value)
            if verbose:
                print(f"  round {r + 1}/{rounds}  {name:<40s} {fmt(value)}", flush=True)
    return values


def fmt(x: float) -> str:
    """Compact human number: 3 significant digits, thousands separators above 1000."""
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero."""
    return a / b if b else float("nan")


def print_table(title: str, summaries: list[Summary], reference: str | None = None) -> None:
    """Print medians, [min–max] and the ratio of each median to the reference contender's median."""
    ref = next((s for s in summaries if s.name == reference), None)
    print(f"\n{title}")
    head = f"{'contender':<44s} {'median':>12s} {'[min–max]':>24s}"
    if ref is not None:
        head += f"  ÷ {ref.name[:30]}"
    print(head)
    print("-" * len(head))
    for s in summaries:
        line = f"{s.name:<44s} {fmt(s.median) + ' ' + s.unit:>12s} {'[' + fmt(s.low) + '–' + fmt(s.high) + ']':>24s}"
        if ref is not None:
            line += f"  {ratio(s.median, ref.median):.3f}"
        print(line)
    print(flush=True)


def machine() -> dict:
    """Description of the machine the figures were measured on."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average": os.getloadavg()}
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(mem_kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    for mod, dist in (("torch", "torch"), ("numpy", "numpy"), ("numba", "numba"), ("ffcv", "ffcv"),
                      ("PIL", "pillow"), ("h5py", "h5py")):
        try:
            info[mod] = version(dist)  # ffcv's own __version__ says 0.0.3rc1 for 1.0.2
        except PackageNotFoundError:
            pass
    return info


def write_results(name: str, payload: dict) -> Path:
    """Write bench/results/<name>.json (machine description and date added) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "commit": git_commit(), "machine": machine(), **payload}
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path.relative_to(REPO_DIR)}")
    return path


def parser(description: str) -> argparse.ArgumentParser:
    """Argument parser every benchmark shares: --quick and --rounds."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="short run (smoke test, figures not meaningful)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default depends on --quick)")
    return p


def git_commit() -> str:
    """Current commit of the repository, for the record."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def numba_env(cache_dir: str | Path | None = None) -> dict[str, str]:
    """Environment for a child process, with NUMBA_CACHE_DIR set (default: the repository's .numba_cache)."""
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = str(cache_dir or os.environ.get("NUMBA_CACHE_DIR", REPO_DIR / ".numba_cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH", "")]))
    return env
