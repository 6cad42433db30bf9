"""The SSL baselines on digits: how much the trained backbone beats the untrained one, per recipe and seed.

A freshly generated ssl-multiview experiment (digits, resnet-small, its configs/default.yaml: heads at 1/16 of
the authors' widths, 1 warm-up epoch) trains each recipe with `python -m <package>.train --ssl.recipe R` for
`--epochs` epochs per seed. The untrained reference is the same run with the backbone's lr at ~0
(`--ssl.base_lr 1e-12`): the same views and steps, its BatchNorm statistics and the online probe still learn.
Reported per recipe: the online linear probe's and the kNN's validation top-1 of both (last epoch), the
margin trained - untrained per seed, its mean and spread (min, max) over seeds.

    python bench/ssl_margins.py [--quick] [--epochs 3] [--seeds 0 1] [--recipes simclr byol ...]
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
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


def last_epoch(exp: Path, package: str, run_id: str, *args: str) -> dict:
    """Train `run_id` with `args`; its last epoch record."""
    env = numba_env()
    env["PYTHONPATH"] = f"{exp / 'src'}:{env['PYTHONPATH']}"
    cmd = [sys.executable, "-m", f"{package}.train", "--logging.run_id", run_id, "--logging.progress", "false", *args]
    done = subprocess.run(cmd, cwd=exp, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{run_id} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (exp / "runs" / run_id / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "epoch"][-1]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    args = p.parse_args()
    epochs = 1 if args.quick else args.epochs
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        exp, package = make_experiment(Path(tmp))
        for recipe in args.recipes:
            rows = []
            for seed in args.seeds:
                common = ["--ssl.recipe", recipe, "--training.epochs", str(epochs), "--ssl.seed", str(seed),
                          "--data.loader_seed", str(seed), "--training.seed", str(seed)]
                if args.quick:
                    common += ["--training.limit_train_batches", "3"]
                started = time.perf_counter()
                trained = last_epoch(exp, package, f"{recipe}-s{seed}", *common)
                untrained = last_epoch(exp, package, f"{recipe}-s{seed}-lr0", *common, "--ssl.base_lr", "1e-12")
                row = {"seed": seed, "seconds": round(time.perf_counter() - started, 1)}
                for key in ("val_probe_top1", "val_knn_top1"):
                    row[key] = {"trained": trained[key], "untrained": untrained[key],
                                "margin": trained[key] - untrained[key]}
                rows.append(row)
                print(f"{recipe} seed {seed}: probe {untrained['val_probe_top1']:.3f} -> {trained['val_probe_top1']:.3f}, "
                      f"kNN {untrained['val_knn_top1']:.3f} -> {trained['val_knn_top1']:.3f} ({row['seconds']} s)",
                      flush=True)
            summary = {}
            for key in ("val_probe_top1", "val_knn_top1"):
                margins = [r[key]["margin"] for r in rows]
                summary[key] = {"margin_mean": statistics.mean(margins), "margin_min": min(margins),
                                "margin_max": max(margins)}
            results[recipe] = {"runs": rows, "summary": summary}
    write_results("ssl_margins", {"epochs": epochs, "seeds": args.seeds, "quick": args.quick,
                                  "untrained": "the same run at ssl.base_lr 1e-12 (BatchNorm statistics and the "
                                               "probe still learn)", "recipes": results})


if __name__ == "__main__":
    main()
