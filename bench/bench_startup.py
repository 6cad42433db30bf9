"""Start-up: seconds from `python` process start to the first batch, in fresh processes.

Contenders, each a fresh `python -c` child (same pipelines as bench_loader.py, 2 workers):
  PIL DataLoader              JPEG files on disk, PIL augmentations (imports torch + PIL only)
  upstream FFCV               stock FFCV pipeline (its pipeline compiler never caches: every launch compiles)
  torchstrap, first launch    our seeded pipeline with an empty NUMBA_CACHE_DIR (a new one every round)
  torchstrap, second launch   our seeded pipeline with NUMBA_CACHE_DIR filled by an earlier launch

Each child reports when its imports were done, its loader built and its first batch out, so the table
also splits the time into import / build / first batch.

The default experiment (`torchstrap new --defaults`: supervised, digits, MLP) is measured the same way, from
`python -m <package>.train --training.fast_dev_run true` started to its first training step, split into imports,
trainer built (model, loaders, optimizer, criterion) and first batch:
  second experiment       a freshly generated experiment, this installation's kernel cache filled by an earlier one
  first experiment        an empty kernel cache: `torchstrap new`'s compile (kernel_cache.warm) and then the run

    python bench/bench_startup.py [--quick] [--rounds N] [--size 256 32] [--no-experiment]
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import datasets
from common import BENCH_DIR, REPO_DIR, Summary, interleave, numba_env, parser, print_table, write_results

CHILD = """
import os, sys, time
sys.path.insert(0, {bench!r})
def mark(what):
    print(what, time.time(), flush=True)
kind, size, quick = {kind!r}, {size}, {quick}
if kind == "pil":
    import torch, PIL.Image
elif kind == "torchstrap":
    import torchstrap_runtime.data  # first, as an experiment does (it imports FFCV its own way)
else:
    import ffcv.loader, ffcv.fields.rgb_image, ffcv.transforms
mark("imported")
import datasets, bench_loader
spec = datasets.spec(size, quick)
if kind == "pil":
    loader = bench_loader.pil_loader(spec, from_files=True)
elif kind == "ffcv":
    loader = bench_loader.ffcv_loader(spec)
else:
    loader = bench_loader.torchstrap_loader(spec)
mark("built")
images, labels = next(iter(loader))
assert images.shape[0] == bench_loader.BATCH[size], images.shape
mark("first")
os._exit(0)
"""


def launch(kind: str, size: int, quick: bool, cache_dir: Path | None) -> dict[str, float]:
    """Start one child; return seconds from process start to each of its marks (imported, built, first)."""
    code = CHILD.format(bench=str(BENCH_DIR), kind=kind, size=size, quick=quick)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=numba_env(cache_dir), capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} start-up child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    marks = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("imported", "built", "first"):
            marks[parts[0]] = float(parts[1]) - t0
    return marks


def torchstrap_available() -> str | None:
    """None if our seeded pipeline can be imported with the names bench_loader uses, else the reason."""
    code = "import torchstrap_runtime.data as d; d.Loader; d.RandomResizedCrop; d.RandomHorizontalFlip"
    proc = subprocess.run([sys.executable, "-c", code], env=numba_env(), capture_output=True, text=True)
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


def bench_size(size: int, quick: bool, rounds: int, workdir: Path) -> dict:
    """Interleave fresh launches of every contender; print and return the summary."""
    spec = datasets.spec(size, quick)
    datasets.ensure(spec)
    datasets.export_jpegs(spec)
    phases: dict[str, list[dict[str, float]]] = {}

    def contender(name: str, kind: str, cache: Callable[[], Path | None]) -> Callable[[], float]:
        def run() -> float:
            marks = launch(kind, size, quick, cache())
            phases.setdefault(name, []).append(marks)
            return marks["first"]
        return run

    fresh = iter(range(10**6))
    warm_cache = workdir / f"warm_{size}"
    contenders = {"PIL DataLoader": contender("PIL DataLoader", "pil", lambda: None),
                  "upstream FFCV": contender("upstream FFCV", "ffcv", lambda: workdir / f"ffcv_{size}")}
    missing = torchstrap_available()
    notes = {}
    if missing is None:
        launch("torchstrap", size, quick, warm_cache)  # fills the warm cache: the "first launch" before the rounds
        contenders["torchstrap, first launch"] = contender(
            "torchstrap, first launch", "torchstrap", lambda: workdir / f"cold_{size}_{next(fresh)}")
        contenders["torchstrap, second launch"] = contender(
            "torchstrap, second launch", "torchstrap", lambda: warm_cache)
    else:
        notes["torchstrap"] = f"not measured: {missing}"
        print(f"  torchstrap: {notes['torchstrap']}")

    print(f"\n=== start-up to first batch, {size} px ({spec.path.name}) ===")
    values = interleave(contenders, rounds)
    summaries = [Summary(name, "s", v) for name, v in values.items()]
    print_table(f"{size} px: seconds from process start to first batch (lower is better), "
                f"ratios to upstream FFCV", summaries, reference="upstream FFCV")
    split = {name: {phase: Summary(phase, "s", [m[phase] for m in marks]).median
                    for phase in ("imported", "built", "first")} for name, marks in phases.items()}
    for name, s in split.items():
        print(f"  {name:<28s} imports done {s['imported']:6.2f} s   loader built {s['built']:6.2f} s   "
              f"first batch {s['first']:6.2f} s")
    return {"rounds": rounds, "contenders": [s.as_dict() for s in summaries], "phases_median": split,
            "notes": notes}


EXPERIMENT_CHILD = """
import os, sys, time
T0 = float(sys.argv[2])
def mark(what):
    print(what, time.time() - T0, flush=True)
import importlib
package = sys.argv[1]
train = importlib.import_module(package + ".train")
Trainer = importlib.import_module(package + ".trainer").Trainer
mark("imported")
build = Trainer.initialize_logger
def built(self):
    build(self)
    mark("built")
def first_step(self):
    mark("first")
    os._exit(0)
Trainer.initialize_logger, Trainer.train_step = built, first_step
train.main(["--training.fast_dev_run", "true", "--logging.progress", "false"])
"""


def new_experiment(folder: Path, data_from: Path | None = None) -> Path:
    """A freshly generated default experiment with its digits .beton files (copied from `data_from`)."""
    sys.path.insert(0, str(REPO_DIR))
    from torchstrap.generator.cli import new_experiment as generate

    exp = generate(folder, {"use_slurm": False})
    if data_from is not None:
        shutil.copytree(data_from / "data", exp / "data")
    else:
        subprocess.run([sys.executable, "scripts/prepare_data.py"], cwd=exp, env=numba_env(), check=True,
                       capture_output=True)
    return exp


def first_step(exp: Path, cache: Path) -> dict[str, float]:
    """Start the experiment's training; seconds from process start to imports done, trainer built, first step."""
    env = numba_env(cache)
    env["PYTHONPATH"] = os.pathsep.join([str(exp / "src"), env["PYTHONPATH"]])
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", EXPERIMENT_CHILD, "my_experiment", repr(start)], cwd=exp, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"the experiment's first step failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {parts[0]: float(parts[1]) for parts in map(str.split, proc.stdout.splitlines())
            if len(parts) == 2 and parts[0] in ("imported", "built", "first")}


def warm_seconds(exp: Path, cache: Path) -> float:
    """What `torchstrap new` adds in front of the first experiment: compiling its kernels into an empty cache."""
    start = time.time()
    subprocess.run([sys.executable, "-m", "torchstrap_runtime.kernel_cache", str(exp)], cwd=exp, env=numba_env(cache),
                   check=True, capture_output=True)
    return time.time() - start


def bench_experiment(rounds: int, workdir: Path) -> dict:
    """First and second experiment after installation (see the module docstring); print and return the summary."""
    print("\n=== default experiment: python start -> first training step ===")
    shared = workdir / "installation_cache"
    first_exp = new_experiment(workdir / "exp0")
    warm_seconds(first_exp, shared)  # the installation's first experiment fills the shared cache
    phases: dict[str, list[dict[str, float]]] = {"second experiment": [], "first experiment": []}
    warm: list[float] = []
    fresh = iter(range(1, 10**6))

    def second() -> float:
        marks = first_step(new_experiment(workdir / f"exp{next(fresh)}", first_exp), shared)
        phases["second experiment"].append(marks)
        return marks["first"]

    def first() -> float:
        cache = workdir / f"empty_cache_{next(fresh)}"
        exp = new_experiment(workdir / f"exp{next(fresh)}", first_exp)
        warm.append(warm_seconds(exp, cache))
        marks = first_step(exp, cache)
        phases["first experiment"].append(marks)
        return marks["first"]

    values = interleave({"second experiment": second, "first experiment": first}, rounds)
    summaries = [Summary(name, "s", v) for name, v in values.items()] + [Summary("compile at torchstrap new", "s", warm)]
    print_table("seconds from process start to the first training step (lower is better)", summaries)
    split = {name: {phase: Summary(phase, "s", [m[phase] for m in marks]).median
                    for phase in ("imported", "built", "first")} for name, marks in phases.items()}
    for name, p in split.items():
        print(f"  {name:<20s} imports done {p['imported']:6.2f} s   trainer built {p['built']:6.2f} s   "
              f"first step {p['first']:6.2f} s")
    return {"rounds": rounds, "contenders": [s.as_dict() for s in summaries], "phases_median": split}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs="+", default=[256, 32], choices=[256, 32])
    p.add_argument("--no-experiment", action="store_true", help="leave out the default experiment's first step")
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        results = {f"{size}px": bench_size(size, args.quick, rounds, Path(tmp)) for size in args.size}
        if not args.no_experiment:
            results["experiment"] = bench_experiment(args.rounds or (1 if args.quick else 5), Path(tmp))
    write_results("startup" + ("_quick" if args.quick else ""), {"quick": args.quick, "results": results})


if __name__ == "__main__":
    main()
