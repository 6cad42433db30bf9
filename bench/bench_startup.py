"""Start-up: seconds from `python` process start to the first batch, in fresh processes.

Contenders, each a fresh `python -c` child (same pipelines as bench_loader.py, 2 workers):
  PIL DataLoader              JPEG files on disk, PIL augmentations (imports torch + PIL only)
  upstream FFCV               stock FFCV pipeline (its pipeline compiler never caches: every launch compiles)
  torchstrap, first launch    our seeded pipeline with an empty NUMBA_CACHE_DIR (a new one every round)
  torchstrap, second launch   our seeded pipeline with NUMBA_CACHE_DIR filled by an earlier launch

Each child reports when its imports were done, its loader built and its first batch out, so the table
also splits the time into import / build / first batch.

    python bench/bench_startup.py [--quick] [--rounds N] [--size 256 32]
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import datasets
from common import BENCH_DIR, Summary, interleave, numba_env, parser, print_table, write_results

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


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs="+", default=[256, 32], choices=[256, 32])
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        results = {f"{size}px": bench_size(size, args.quick, rounds, Path(tmp)) for size in args.size}
    write_results("startup" + ("_quick" if args.quick else ""), {"quick": args.quick, "results": results})


if __name__ == "__main__":
    main()
