"""`make demo` end to end (set-up already done): seconds to generate the demo experiment, write digits,
train it and reach ≥ 95 % validation accuracy.

Runs what `make demo` runs after its `setup` prerequisite, `python -m torchstrap.generator.demo <folder>`, into a
temporary folder (so it never touches the repository's demo-experiment/), `--rounds` times. One difference:
`--no-install` with the experiment's src/ on PYTHONPATH instead of its `pip install -e`, which would re-point
the shared .venv at a temporary folder. Reports seconds from the start to each phase, to the moment the first
epoch record with val_top1 ≥ 95 % appears in log.jsonl, and to the end (all its epochs), and the final accuracy.

    python bench/bench_demo.py [--quick] [--rounds N]
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO_DIR, Summary, numba_env, parser, print_table, write_results

TARGET = 0.95


def demo_available() -> str | None:
    """None when `torchstrap.generator.demo` exists, else why not."""
    sys.path.insert(0, str(REPO_DIR))
    try:
        found = importlib.util.find_spec("torchstrap.generator.demo") is not None
    except ImportError as err:
        return f"torchstrap.generator.demo cannot be imported: {err}"
    return None if found else "torchstrap/generator/demo.py does not exist yet"


def read_epochs(folder: Path) -> list[dict]:
    """The epoch records (with val_top1) of the newest log.jsonl under `folder` (complete lines only)."""
    logs = sorted(folder.rglob("log.jsonl"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return []
    lines = logs[-1].read_text().split("\n")[:-1]
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if "val_top1" in r]


def run_demo(workdir: Path, index: int) -> dict:
    """One `python -m torchstrap.generator.demo --no-install`; seconds from its start to each phase, to the first epoch
    record with val_top1 >= 95 % (log polled every 0.1 s) and to its end."""
    target = workdir / f"demo_{index}" / "demo-experiment"
    target.parent.mkdir(parents=True)
    env = numba_env()
    env["PYTHONPATH"] = f"{target / 'src'}:{env['PYTHONPATH']}"  # instead of the pip install -e (see docstring)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "torchstrap.generator.demo", str(target), "--no-install"], cwd=REPO_DIR,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    phases: dict[str, float] = {}
    output: list[str] = []

    def read_output() -> None:
        for line in proc.stdout:
            output.append(line)
            if line.startswith("==> "):
                phases[line[4:].split(" (")[0].strip()] = time.perf_counter() - t0

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    reached = None
    while proc.poll() is None:
        if reached is None and any(float(r["val_top1"]) >= TARGET for r in read_epochs(target)):
            reached = time.perf_counter() - t0
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(f"torchstrap.generator.demo failed (exit {proc.returncode}):\n{''.join(output)[-4000:]}")
    epochs = read_epochs(target)
    if reached is None and any(float(r["val_top1"]) >= TARGET for r in epochs):
        reached = wall
    first = next((r for r in epochs if float(r["val_top1"]) >= TARGET), None)
    return {"wall_s": wall, "s_to_target": reached if reached is not None else float("nan"),
            "epoch_at_target": first.get("epoch") if first else None, "phases_s": phases,
            "final_val_top1": float(epochs[-1]["val_top1"]) if epochs else float("nan"), "epochs": len(epochs)}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    missing = demo_available()
    if missing:
        print(f"make demo: not measured ({missing})")
        write_results("demo" + ("_quick" if args.quick else ""), {"quick": args.quick, "not_measured": missing})
        return
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        runs = []
        for i in range(rounds):
            runs.append(run_demo(Path(tmp), i))
            r = runs[-1]
            print(f"  run {i + 1}/{rounds}: {r['s_to_target']:.1f} s to {TARGET:.0%} (epoch {r['epoch_at_target']}), "
                  f"{r['wall_s']:.1f} s in all, final top-1 {r['final_val_top1']:.4f}; phases {r['phases_s']}",
                  flush=True)
    summaries = [Summary("make demo, whole command", "s", [r["wall_s"] for r in runs]),
                 Summary(f"seconds from start to val top-1 ≥ {TARGET:.0%}", "s", [r["s_to_target"] for r in runs]),
                 Summary("final val top-1", "", [r["final_val_top1"] for r in runs])]
    print_table("make demo end to end (set-up done)", summaries)
    write_results("demo" + ("_quick" if args.quick else ""),
                  {"quick": args.quick, "rounds": rounds, "runs": runs, "target": TARGET,
                   "contenders": [s.as_dict() for s in summaries]})


if __name__ == "__main__":
    main()
