"""Array logging cost: the Trainer's `log_hdf5` (HDF5Logger) vs `np.save` and `torch.save` per step.

Part 1, cost per call, one 256×256 float32 array (256 KiB) per step, `--steps` steps per round:
  HDF5Logger.log      one row appended to a resizable dataset of run_dir/arrays.h5, written synchronously
                      (background=False: the write itself; the Trainer's log_hdf5 hands the same write to
                      a writer thread, whose effect on the loop is part 2)
  np.save per step    one .npy file per step
  torch.save per step one .pt file per step
  JSON line           a scalar JSON line (for scale)
Part 2, the training loop (bench_trainer.py's MLP, 1 thread) with and without `log_hdf5` of the array
each step: steps/s, so the cost is seen where it matters. Twice: with batch 256 (a ~2.5 ms step, the worst
case: the copy and the writer thread weigh most) and with batch 4096 (a ~30 ms step, closer to real models).

    python bench/bench_logging.py [--quick] [--rounds N] [--steps N]
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import bench_trainer as bt
from common import Summary, interleave, parser, print_table, write_results

SHAPE = (256, 256)
HEAVY_BATCH = 4096


def per_call(write: Callable[[int, np.ndarray], None], steps: int) -> float:
    """Microseconds per call of `write(step, array)`, the array changing every step."""
    array = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    t0 = time.perf_counter()
    for step in range(steps):
        array[0, 0] = step
        write(step, array)
    return 1e6 * (time.perf_counter() - t0) / steps


def writers(folder: Path, steps: int) -> dict[str, Callable[[], float]]:
    """The contenders of part 1; each round writes into a fresh folder, removed after it (outside the timing)."""
    from torchstrap_runtime.loggers import HDF5Logger

    counter = iter(range(10**6))

    def fresh() -> Path:
        path = folder / f"round_{next(counter)}"
        path.mkdir(parents=True)
        return path

    def hdf5() -> float:
        path = fresh()
        logger = HDF5Logger(path / "arrays.h5", background=False)
        us = per_call(lambda step, a: logger.log({"features": a}, step=step, epoch=0), steps)
        logger.close()
        shutil.rmtree(path)
        return us

    def npy() -> float:
        path = fresh()
        us = per_call(lambda step, a: np.save(path / f"features_{step:06d}.npy", a), steps)
        shutil.rmtree(path)
        return us

    def pt() -> float:
        path = fresh()
        us = per_call(lambda step, a: torch.save(torch.from_numpy(a), path / f"features_{step:06d}.pt"), steps)
        shutil.rmtree(path)
        return us

    def jsonl() -> float:
        path = fresh()
        with open(path / "log.jsonl", "a", buffering=1) as f:
            us = per_call(lambda step, a: f.write(json.dumps({"step": step, "value": float(a[0, 1])}) + "\n"), steps)
        shutil.rmtree(path)
        return us

    return {"HDF5Logger.log (log_hdf5)": hdf5, "np.save per step": npy, "torch.save per step": pt,
            "JSON line (scalar)": jsonl}


def array_trainer_class(each_step: Callable[[Any, np.ndarray], None]):
    """bench_trainer's Trainer (log() each step) that also calls `each_step(trainer, array)` each step, with a
    256×256 float32 array changed in place every step."""
    base = bt.trainer_class(progress=False)
    array = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)

    class ArrayTrainer(base):
        def after_train_step(self) -> None:
            super().after_train_step()
            array[0, 0] = self.step
            each_step(self, array)

    return ArrayTrainer


def log_hdf5(trainer, array: np.ndarray) -> None:
    trainer.log_hdf5({"features": array})


def copy_only(trainer, array: np.ndarray) -> None:
    """The floor of any logger that keeps the values: the caller may change the array after the call, so a
    copy is due (256 KiB copied each step also evicts part of the step's working set from the cache)."""
    trainer.last_copy = np.array(array, copy=True)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="calls (part 1) and training steps (part 2) per round")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 9)
    steps = args.steps or (30 if args.quick else 200)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_logging_") as tmp:
        folder = Path(tmp)
        contenders = writers(folder / "calls", steps)
        for run in contenders.values():
            run()  # warm-up: imports (h5py), first files
        print(f"\n=== cost per call, 256×256 float32, {steps} calls per round ===")
        calls = interleave(contenders, rounds)

        bt.configure(folder / "trainer")
        plain = bt.trainer_class(progress=False)
        with_hdf5, with_copy = array_trainer_class(log_hdf5), array_trainer_class(copy_only)
        batches = bt.make_batches(steps)
        loops = {"Trainer, log() each step": lambda: bt.trainer_run(plain, batches, "plain"),
                 "Trainer, log() + log_hdf5(256×256) each step": lambda: bt.trainer_run(with_hdf5, batches, "hdf5"),
                 "Trainer, log() + a copy of the 256×256 array each step": lambda: bt.trainer_run(with_copy, batches,
                                                                                              "copy")}
        bt.trainer_run(with_hdf5, batches[:20], "warm-up")
        print(f"\n=== training loop with log_hdf5 each step, MLP, {steps} steps per round ===")
        loop = interleave(loops, rounds)
        heavy_steps = max(10, steps // 5)
        heavy = bt.make_batches(heavy_steps, batch=HEAVY_BATCH)
        heavy_loops = {f"batch {HEAVY_BATCH}: {name}": (lambda cls=cls, key=key: bt.trainer_run(cls, heavy, key))
                       for (name, cls), key in zip((("Trainer, log() each step", plain),
                                                    ("Trainer, log() + log_hdf5(256×256) each step", with_hdf5)),
                                                   ("heavy plain", "heavy hdf5"))}
        print(f"\n=== the same, batch {HEAVY_BATCH}, {heavy_steps} steps per round ===")
        heavy_loop = interleave(heavy_loops, rounds)

    call_summaries = [Summary(name, "µs/call", v) for name, v in calls.items()]
    print_table("cost per call (lower is better), ratios to HDF5Logger", call_summaries,
                reference="HDF5Logger.log (log_hdf5)")
    loop_summaries = [Summary(name, "steps/s", v) for name, v in loop.items()]
    print_table("training loop, steps per second (higher is better)", loop_summaries,
                reference="Trainer, log() each step")
    cpu = [Summary(name, "steps/cpu-s", bt.CPU_RATES[key]) for name, key in zip(loop, ("plain", "hdf5", "copy"))]
    print_table("training loop, steps per CPU-second (robust to other processes' load)", cpu,
                reference="Trainer, log() each step")
    heavy_summaries = [Summary(name, "steps/s", v) for name, v in heavy_loop.items()]
    print_table(f"training loop, batch {HEAVY_BATCH}, steps per second", heavy_summaries,
                reference=heavy_summaries[0].name)
    med = {s.name: s.median for s in call_summaries}
    ratios = {"torch.save / HDF5Logger": med["torch.save per step"] / med["HDF5Logger.log (log_hdf5)"],
              "np.save / HDF5Logger": med["np.save per step"] / med["HDF5Logger.log (log_hdf5)"],
              "loop with log_hdf5 / loop without": loop_summaries[1].median / loop_summaries[0].median,
              "loop with log_hdf5 / loop without (CPU time)": cpu[1].median / cpu[0].median,
              "loop with a copy only / loop without": loop_summaries[2].median / loop_summaries[0].median,
              f"loop with log_hdf5 / loop without, batch {HEAVY_BATCH}": heavy_summaries[1].median / heavy_summaries[0].median}
    for k, v in ratios.items():
        print(f"  {k:<48s} {v:.3f}")
    write_results("logging" + ("_quick" if args.quick else ""),
                  {"quick": args.quick, "rounds": rounds, "steps_per_round": steps, "array": "256x256 float32",
                   "calls": [s.as_dict() for s in call_summaries], "loop": [s.as_dict() for s in loop_summaries],
                   "loop_cpu_time": [s.as_dict() for s in cpu], "heavy_batch": HEAVY_BATCH,
                   "loop_heavy": [s.as_dict() for s in heavy_summaries], "ratios": ratios})


if __name__ == "__main__":
    main()
