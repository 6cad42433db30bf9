"""The cost of each log mirror (`logging.backends`) per `Trainer.log` call, against the JSON line alone.

Each contender writes `--calls` train-step lines (train_loss, lr) the way `Trainer.log` does: the JSON line, then
the line handed to the mirror. TensorBoard event file, CSV file, W&B offline (WANDB_MODE=offline) and an MLflow
file store, each in a fresh run folder per round; the time to open and close a backend is not counted.

    python bench/bench_mirrors.py [--quick] [--rounds N] [--calls N]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_DIR, Summary, interleave, parser, print_table, write_results

sys.path.insert(0, str(REPO_DIR))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def per_call(backend: str | None, calls: int) -> float:
    """Microseconds per log() call: the JSON line, plus the mirror's copy when `backend` is given."""
    from torchstrap_runtime.loggers import JSONLogger
    from torchstrap_runtime.mirrors import Mirrors

    with tempfile.TemporaryDirectory(prefix="bench_mirrors_") as tmp:
        run_dir = Path(tmp) / "runs" / "run"
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text('{"config": {"optimizer": {"lr": 0.1}}}')
        logger = JSONLogger(run_dir / "log.jsonl")
        mirrors = Mirrors(run_dir, [backend] if backend else [])
        t0 = time.perf_counter()
        for step in range(calls):
            record = logger.log({"kind": "train_step", "train_loss": 1.0 / (step + 1), "lr": 0.1}, epoch=0, step=step)
            mirrors.log(record)
        elapsed = time.perf_counter() - t0
        mirrors.close(finished=True)
        logger.close()
    return 1e6 * elapsed / calls


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=None, help="log() calls per round (default 2000; --quick 200)")
    args = p.parse_args()
    calls = args.calls or (200 if args.quick else 2000)
    rounds = args.rounds or (1 if args.quick else 3)
    contenders = {"JSON line alone": None, "+ csv": "csv", "+ tensorboard": "tensorboard", "+ wandb (offline)": "wandb",
                  "+ mlflow (file store)": "mlflow"}
    values = interleave({name: (lambda b=backend: per_call(b, calls)) for name, backend in contenders.items()}, rounds)
    summaries = [Summary(name, "us", v) for name, v in values.items()]
    print_table(f"cost per log() call ({calls} train-step lines per round)", summaries, reference="JSON line alone")
    write_results("mirrors", {"calls": calls, "rounds": rounds, "results": [s.as_dict() for s in summaries]})


if __name__ == "__main__":
    main()
