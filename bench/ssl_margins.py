"""The SSL baselines on digits: how much the trained backbone beats the untrained one, per recipe and seed.

A freshly generated ssl-multiview experiment (digits, resnet-small, its configs/default.yaml: heads at 1/16 of
the authors' widths, 1 warm-up epoch) trains each recipe with `python -m <package>.train --ssl.recipe R` for
`--epochs` epochs per seed. The untrained reference is the same run with the backbone's lr at ~0
(`--ssl.base_lr 1e-12`): the same views and steps, its BatchNorm statistics and the online probe still learn.
Reported per recipe: the online linear probe's and the kNN's validation top-1 of both (last epoch), the
margin trained - untrained per seed, its mean and spread (min, max) over seeds; the seconds of each run and
the 1-minute load average after it. `--jobs` pairs (trained, untrained) run at once; the results file is rewritten after each (`complete`).

    python bench/ssl_margins.py [--quick] [--epochs 4] [--seeds 0 1] [--jobs 2] [--recipes simclr byol ...]
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO_DIR, numba_env, parser, write_results

RECIPES = ["simclr", "byol", "vicreg", "barlow_twins", "mocov3", "dino"]


def make_experiment(root: Path) -> tuple[Path, str]:
    """An ssl-multiview experiment from this checkout's template (its HEAD), with the digits .beton files."""
    from torchstrap.generator.cli import new_experiment
    from torchstrap_runtime.data import write_digits

    exp = new_experiment(root / "exp", {"task": "ssl-multiview", "project_name": "ssl-margins",
                                        "model": "resnet-small"}, template=str(REPO_DIR), vcs_ref="HEAD")
    write_digits(exp / "data" / "digits")
    return exp, next(exp.glob("src/*/trainer.py")).parent.name


def last_epoch(exp: Path, package: str, run_id: str, *args: str) -> tuple[dict, float]:
    """Train `run_id` with `args`; its last epoch record and the seconds the run took."""
    env = numba_env()
    env["PYTHONPATH"] = f"{exp / 'src'}:{env['PYTHONPATH']}"
    cmd = [sys.executable, "-m", f"{package}.train", "--logging.run_id", run_id, "--logging.progress", "false", *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=exp, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode:
        raise RuntimeError(f"{run_id} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (exp / "runs" / run_id / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "epoch"][-1], seconds


def summarize(rows: list[dict]) -> dict:
    """Per metric: untrained, trained and margin as mean and (min, max) over the seeds' runs."""
    summary = {}
    for key in ("val_probe_top1", "val_knn_top1"):
        summary[key] = {}
        for part in ("untrained", "trained", "margin"):
            values = [r[key][part] for r in rows]
            summary[key][part] = {"mean": statistics.mean(values), "min": min(values), "max": max(values)}
    return summary


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--jobs", type=int, default=2, help="recipe/seed pairs trained at once")
    args = p.parse_args()
    epochs = 1 if args.quick else args.epochs
    runs: dict[str, list] = {recipe: [] for recipe in args.recipes}
    header = {"epochs": epochs, "seeds": args.seeds, "jobs": args.jobs, "quick": args.quick,
              "untrained": "the same run at ssl.base_lr 1e-12 (BatchNorm statistics and the probe still learn)"}
    lock = threading.Lock()

    def pair(exp: Path, package: str, seed: int, recipe: str) -> None:
        """The trained run and its untrained reference for one recipe and seed; the results file rewritten."""
        common = ["--ssl.recipe", recipe, "--training.epochs", str(epochs), "--ssl.seed", str(seed),
                  "--data.loader_seed", str(seed), "--training.seed", str(seed)]
        if args.quick:
            common += ["--training.limit_train_batches", "3"]
        trained, trained_s = last_epoch(exp, package, f"{recipe}-s{seed}", *common)
        untrained, untrained_s = last_epoch(exp, package, f"{recipe}-s{seed}-lr0", *common, "--ssl.base_lr", "1e-12")
        row = {"seed": seed, "seconds": {"trained": trained_s, "untrained": untrained_s},
               "load_average_1min": round(os.getloadavg()[0], 2)}
        for key in ("val_probe_top1", "val_knn_top1"):
            row[key] = {"trained": trained[key], "untrained": untrained[key], "margin": trained[key] - untrained[key]}
        print(f"{recipe} seed {seed}: probe {untrained['val_probe_top1']:.3f} -> {trained['val_probe_top1']:.3f}, "
              f"kNN {untrained['val_knn_top1']:.3f} -> {trained['val_knn_top1']:.3f} "
              f"({trained_s} + {untrained_s} s, load {row['load_average_1min']})", flush=True)
        with lock:
            runs[recipe].append(row)
            done = sum(map(len, runs.values()))
            write_results("ssl_margins" + ("_quick" if args.quick else ""), {
                **header, "complete": done == len(args.seeds) * len(args.recipes),
                "recipes": {r: {"runs": sorted(rows, key=lambda r: r["seed"]), "summary": summarize(rows)}
                            for r, rows in runs.items() if rows}})

    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        exp, package = make_experiment(Path(tmp))
        # seed by seed: a run cut short still has every recipe once
        futures = [pool.submit(pair, exp, package, seed, recipe) for seed in args.seeds for recipe in args.recipes]
        for future in futures:
            future.result()


if __name__ == "__main__":
    main()
