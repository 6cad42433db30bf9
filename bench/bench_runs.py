"""`torchstrap runs` over many run folders: the whole command (a new process) and the table in-process,
against the plain way of reading the same runs (`json.load` of config.json and of every log.jsonl line).

Synthetic run folders of realistic size (a CIFAR-like run: 30 epochs x 390 steps logged every 10 steps,
~1,200 log lines, ~190 KB; config.json as the Trainer writes it; a 100 KB arrays.h5 and a checkpoint that
are never read): a 4 x 5 x ... grid of learning rates and seeds, some runs killed, some locked by a dead pid.

    python bench/bench_runs.py [--quick] [--rounds N] [--runs N]
"""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PYTHON, REPO_DIR, Summary, interleave, parser, print_table, write_results

sys.path.insert(0, str(REPO_DIR))

EPOCHS, STEPS, LOG_EVERY = 30, 390, 10


def make_runs(folder: Path, n: int) -> None:
    """`n` run folders under `folder` (4 learning rates x seeds), written once and reused."""
    from torchstrap_runtime import config as cfg
    from torchstrap_runtime import sections  # noqa: F401

    cfg.load_config([])
    base = cfg.config_as_dict()
    rng = random.Random(0)
    for i in range(n):
        run = folder / f"run{i:04d}"
        (run / "checkpoints").mkdir(parents=True)
        config = json.loads(json.dumps(base))
        config["optimizer"]["lr"] = [0.1, 0.05, 0.02, 0.01][i % 4]
        config["training"]["seed"] = i // 4
        config["training"]["epochs"] = EPOCHS
        config["logging"]["run_id"] = run.name
        record = {"config": config, "seeds": {"training.seed": i // 4}, "versions": {"python": "3.11"},
                  "git": {"commit": "0" * 40, "dirty": False}, "world_size": 1, "started": "2026-01-01T00:00:00",
                  "command": ["train.py", "-C", "configs/default.yaml"]}
        (run / "config.json").write_text(json.dumps(record, indent=2))
        killed = i % 10 == 9
        epochs = rng.randrange(5, EPOCHS) if killed else EPOCHS
        lines, t, step = [], 0.0, 0
        for epoch in range(epochs):
            for _ in range(STEPS):
                if step % LOG_EVERY == 0:
                    lines.append({"epoch": epoch, "step": step, "time": round(t, 6), "kind": "train_step",
                                  "train_loss": rng.random() * 2, "lr": 0.1 * math.cos(step / 1e4)})
                step += 1
                t += 0.05
            lines.append({"epoch": epoch, "step": step, "time": round(t, 6), "kind": "epoch",
                          "train_loss": rng.random(), "lr": 0.05, "val_loss": rng.random(),
                          "val_top1": rng.random(), "val_top5": rng.random()})
        if not killed:
            lines.append({"epoch": epochs, "step": step, "time": round(t, 6), "kind": "end", "status": "finished"})
        (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        (run / "arrays.h5").write_bytes(os.urandom(100_000))
        (run / "checkpoints" / "last.pt").write_bytes(b"\0" * 1000)
        if killed and i % 20 == 19:
            (run / "lock").write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 1}))


def plain_json(folder: Path) -> float:
    """The contender: json.load every config.json and json.loads every log line, keep the epoch lines."""
    t0 = time.perf_counter()
    rows = []
    for run in sorted(folder.iterdir()):
        with open(run / "config.json") as f:
            record = json.load(f)
        with open(run / "log.jsonl") as f:
            epochs = [r for r in map(json.loads, f) if r.get("kind") == "epoch"]
        rows.append((record["config"]["optimizer"]["lr"], max(r["val_top1"] for r in epochs)))
    return time.perf_counter() - t0


def table_in_process(folder: Path) -> float:
    from torchstrap_runtime.runs import load_runs, runs_table

    t0 = time.perf_counter()
    rows = runs_table(load_runs([folder]))
    assert len(rows) == len(os.listdir(folder))
    return time.perf_counter() - t0


CPU_SECONDS: list[float] = []   # user + system time of each command (the machine is shared: wall time is noisy)


def command(folder: Path) -> float:
    """`torchstrap runs FOLDER` as a user types it: a new Python process, imports, table printed."""
    import resource

    env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([PYTHON, "-m", "torchstrap.generator.cli", "runs", str(folder)], env=env, capture_output=True,
                         text=True, check=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    assert out.stdout.count("\n") >= len(os.listdir(folder)), out.stdout[-500:]
    return elapsed


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None, help="run folders (default 1000; --quick 50)")
    p.add_argument("--folder", type=Path, help="keep the synthetic runs here (made once, reused next time)")
    args = p.parse_args()
    n = args.runs or (50 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench_runs_") as tmp:
        folder = args.folder or Path(tmp) / "runs"
        t0 = time.perf_counter()
        if not (folder.is_dir() and len(os.listdir(folder)) == n):
            make_runs(folder, n)
        size = sum(f.stat().st_size for f in folder.rglob("log.jsonl")) / 2**20
        print(f"{n} run folders ready in {time.perf_counter() - t0:.1f} s ({size:.0f} MiB of log.jsonl)")
        plain_json(folder)  # warm the page cache for every contender alike
        values = interleave({"torchstrap runs (whole command)": lambda: command(folder),
                             "runs_table(load_runs()) in-process": lambda: table_in_process(folder),
                             "plain json.load of every file": lambda: plain_json(folder)}, rounds)
    summaries = [Summary(name, "s", v) for name, v in values.items()]
    print_table(f"torchstrap runs over {n} run folders (target: whole command < 2 s at 1,000)", summaries,
                reference="plain json.load of every file")
    cpu = sorted(CPU_SECONDS)[len(CPU_SECONDS) // 2]
    print(f"torchstrap runs: {cpu:.2f} s of CPU time (user + system, median), load average {os.getloadavg()[0]:.1f}")
    write_results("runs", {"runs": n, "log_mib": round(size, 1), "rounds": rounds, "command_cpu_s": round(cpu, 3),
                           "results": [s.as_dict() for s in summaries]})


if __name__ == "__main__":
    main()
