"""`make demo` end to end (set-up already done): seconds to generate the demo experiment, train it on digits
and reach ≥ 95 % validation accuracy.

Runs what `make demo` runs after its `setup` prerequisite, `python -m generator.demo <folder>`, into a
temporary folder (so it never touches the repository's demo-experiment/), `--rounds` times in fresh processes.
Reports the wall time of the whole command, and from the run's log.jsonl the training time (logger clock)
at which the validation top-1 first reached 95 %, and the final accuracy.

    python bench/bench_demo.py [--quick] [--rounds N]
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_DIR, Summary, numba_env, parser, print_table, write_results

TARGET = 0.95


def demo_available() -> str | None:
    """None when `generator.demo` exists, else why not."""
    sys.path.insert(0, str(REPO_DIR))
    try:
        found = importlib.util.find_spec("generator.demo") is not None
    except ImportError as err:
        return f"generator.demo cannot be imported: {err}"
    return None if found else "generator/demo.py does not exist yet"


def read_epochs(folder: Path) -> list[dict]:
    """The epoch records (with val_top1) of the newest log.jsonl under `folder`."""
    logs = sorted(folder.rglob("log.jsonl"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise RuntimeError(f"the demo wrote no log.jsonl under {folder}")
    records = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    return [r for r in records if "val_top1" in r]


def run_demo(workdir: Path, index: int) -> dict:
    """One `python -m generator.demo` run; returns wall seconds, seconds to the target and final accuracy."""
    target = workdir / f"demo_{index}" / "demo-experiment"
    target.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "generator.demo", str(target)], cwd=REPO_DIR, env=numba_env(),
                          capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"generator.demo failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    epochs = read_epochs(target)
    reached = next((r for r in epochs if float(r["val_top1"]) >= TARGET), None)
    return {"wall_s": wall, "train_s_to_target": float(reached["time"]) if reached else float("nan"),
            "epoch_at_target": reached.get("epoch") if reached else None,
            "final_val_top1": float(epochs[-1]["val_top1"]) if epochs else float("nan"), "epochs": len(epochs)}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    missing = demo_available()
    if missing:
        print(f"make demo: not measured ({missing})")
        write_results("demo" + ("_quick" if args.quick else ""), {"quick": args.quick, "not_measured": missing})
        return
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        runs = []
        for i in range(rounds):
            runs.append(run_demo(Path(tmp), i))
            print(f"  run {i + 1}/{rounds}: {runs[-1]}", flush=True)
    summaries = [Summary("make demo, whole command", "s", [r["wall_s"] for r in runs]),
                 Summary(f"training time to val top-1 ≥ {TARGET:.0%}", "s", [r["train_s_to_target"] for r in runs]),
                 Summary("final val top-1", "", [r["final_val_top1"] for r in runs])]
    print_table("make demo end to end (set-up done)", summaries)
    write_results("demo" + ("_quick" if args.quick else ""),
                  {"quick": args.quick, "rounds": rounds, "runs": runs, "target": TARGET,
                   "contenders": [s.as_dict() for s in summaries]})


if __name__ == "__main__":
    main()
