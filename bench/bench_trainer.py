"""Trainer overhead: torchstrap's Trainer vs a raw PyTorch loop doing the same work, steps per second.

Tiny MLP 784-256-10, batch 256, SGD (momentum 0.9, weight decay 5e-4), cross-entropy, 1 thread, batches as
tensors in memory, one JSON log line per step ({"train_loss", "lr"} with epoch, step, time), one epoch per
round and a checkpoint (model + optimizer) at the end of it, in both contenders:
  raw loop                        a plain for loop writing the JSON line itself, torch.save at the end
  Trainer, log() each step        Trainer subclass, logging.log_every=1 (its after_train_step calls self.log);
                                  its train_step returns the loss, the loop does backward and the step
  Trainer, + progress bar         the same with the default tqdm progress bar on (to stderr)

    python bench/bench_trainer.py [--quick] [--rounds N] [--steps N]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from common import REPO_DIR, Summary, interleave, parser, print_table, write_results

sys.path.insert(0, str(REPO_DIR))

BATCH = 256
CPU_RATES: dict[str, list[float]] = {}  # steps per CPU-second of this process, the load-robust companion figure


def record_cpu(name: str, steps: int, cpu_seconds: float) -> None:
    CPU_RATES.setdefault(name, []).append(steps / cpu_seconds)


def make_mlp() -> nn.Module:
    """784-256-10, the same module in every contender."""
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def make_batches(steps: int, seed: int = 0, batch: int = BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches of `batch` random 784-d inputs with labels, in memory."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(steps)]


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


# ---------------------------------------------------------------- the raw loop
def raw_loop(batches: list, run_dir: Path, name: str = "raw loop") -> float:
    """What a researcher writes by hand; returns steps/s."""
    torch.manual_seed(0)
    model = make_mlp()
    optimizer = make_optimizer(model)
    criterion = nn.CrossEntropyLoss()
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    t0, c0 = time.perf_counter(), time.process_time()
    with open(run_dir / "log.jsonl", "a", buffering=1) as log:
        model.train()
        for step, (x, y) in enumerate(batches):
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record = {"epoch": 0, "step": step, "time": round(time.time() - start, 6), "kind": "train_step",
                      "train_loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]}
            log.write(json.dumps(record) + "\n")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, run_dir / "last.pt")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    record_cpu(name, len(batches), cpu)
    return len(batches) / wall


# ---------------------------------------------------------------- the Trainer
def trainer_class(progress: bool):
    """A Trainer subclass training the MLP on in-memory batches (the way an experiment overrides hooks)."""
    from torchstrap_runtime.trainer import Trainer

    class BenchTrainer(Trainer):
        batches: list = []

        def initialize_model(self) -> None:
            torch.manual_seed(0)
            self.model = make_mlp()

        def initialize_train_loader(self) -> None:
            self.train_loader = self.batches

        def initialize_val_loader(self) -> None:
            self.val_loader = []

        def initialize_optimizer(self) -> None:
            self.optimizer = make_optimizer(self.model)

        def initialize_logger(self) -> None:
            super().initialize_logger()
            self.show_progress = progress  # the tqdm bar on or off, whatever logging.progress says

    return BenchTrainer


def configure(folder: Path) -> None:
    """Load the Trainer's config for the benchmark (1 epoch, log every step, no eval, no scheduler)."""
    from torchstrap_runtime import trainer  # noqa: F401  (declares the standard sections)
    from torchstrap_runtime.config import load_config

    load_config([f"--logging.folder={folder}", "--training.epochs=1", "--training.device=cpu",
                 "--logging.eval_each_epoch=false", "--logging.log_every=1", "--logging.progress=false",
                 "--scheduler.name=none", "--training.seed=0"])


def trainer_run(cls, batches: list, name: str = "Trainer") -> float:
    """Build a fresh trainer (outside the timing), train one epoch; returns steps/s."""
    cls.batches = batches
    trainer = cls()
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train_all_epochs()
    trainer.close()  # drains arrays.h5 (rows still queued count too) and closes log.jsonl
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    record_cpu(name, len(batches), cpu)
    rate = len(batches) / wall
    lines = (trainer.run_dir / "log.jsonl").read_text().count("\n")
    if lines < len(batches):
        raise RuntimeError(f"Trainer wrote {lines} log lines for {len(batches)} steps: log() is not called each step")
    return rate


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="steps per round (one epoch)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 11)
    steps = args.steps or (50 if args.quick else 400)
    torch.set_num_threads(1)
    batches = make_batches(steps)
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as tmp:
        folder = Path(tmp)
        configure(folder / "trainer")
        plain, with_bar = trainer_class(progress=False), trainer_class(progress=True)
        counter = iter(range(10**6))
        contenders: dict[str, Callable[[], float]] = {
            "raw loop": lambda: raw_loop(batches, folder / f"raw_{next(counter)}"),
            "Trainer, log() each step": lambda: trainer_run(plain, batches, "Trainer, log() each step"),
            "Trainer, log() each step + progress bar": lambda: trainer_run(
                with_bar, batches, "Trainer, log() each step + progress bar"),
        }
        raw_loop(batches[:20], folder / "warmup", "warm-up")
        trainer_run(plain, batches[:20], "warm-up")
        print(f"\n=== Trainer overhead: MLP 784-256-10, batch {BATCH}, {steps} steps per round, 1 thread ===")
        values = interleave(contenders, rounds)
    summaries = [Summary(name, "steps/s", v) for name, v in values.items()]
    print_table("steps per second (higher is better), ratios to the raw loop", summaries, reference="raw loop")
    med = {s.name: s.median for s in summaries}
    ratios = {f"{name} / raw loop": m / med["raw loop"] for name, m in med.items() if name != "raw loop"}
    overhead_us = {f"{name}": 1e6 * (1 / m - 1 / med["raw loop"]) for name, m in med.items() if name != "raw loop"}
    for name, us in overhead_us.items():
        print(f"  {name:<44s} {us:+.0f} µs per step vs the raw loop")
    cpu = [Summary(name, "steps/cpu-s", CPU_RATES[name]) for name in values]
    print_table("steps per CPU-second of this process (robust to other processes' load)", cpu, reference="raw loop")
    cpu_ratios = {f"{s.name} / raw loop": s.median / cpu[0].median for s in cpu[1:]}
    write_results("trainer" + ("_quick" if args.quick else ""),
                  {"quick": args.quick, "rounds": rounds, "steps_per_round": steps, "batch_size": BATCH,
                   "contenders": [s.as_dict() for s in summaries], "ratios": ratios,
                   "cpu_time": [s.as_dict() for s in cpu], "cpu_ratios": cpu_ratios,
                   "overhead_us_per_step": overhead_us})


if __name__ == "__main__":
    main()
