"""`make demo`: generate an experiment with default answers, install it, write digits, train, report.

    python -m torchstrap.generator.demo [FOLDER] [--no-install] [-- extra training options]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.run_folder import CONFIG_FILE, CURVES_FILE, HDF5_FILE, LOG_FILE, last_checkpoint

from .lifecycle import new_experiment

TARGET_TOP1 = 0.95


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    install = "--no-install" not in own
    positional = [a for a in own if not a.startswith("--")]
    folder = Path(positional[0] if positional else "demo-experiment").absolute()
    started = time.time()

    step(f"generating {folder.name}/ from the template (default answers)")
    if folder.exists():
        shutil.rmtree(folder)
    new_experiment(folder, data={"project_name": folder.name}, defaults=True)
    package = folder.name.lower().replace("-", "_").replace(" ", "_").replace(".", "_")
    print(f"{folder} (git repository, one commit); package '{package}'")

    if install:
        step("installing it into this environment")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
                        str(folder)], check=True)

    step("writing the default dataset (scikit-learn digits -> FFCV .beton)")
    subprocess.run([sys.executable, "scripts/prepare_data.py"], cwd=folder, check=True)

    step("training (configs/default.yaml)")
    path = [str(folder / "src"), os.environ.get("PYTHONPATH", "")]  # a runtime checkout on PYTHONPATH stays
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    command = [sys.executable, "-m", f"{package}.train", "-C", "configs/default.yaml", "--logging.run_id", "demo", *extra]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=folder, env=env, check=True)

    run_dir = folder / "runs" / "demo"
    epochs = [record for record in read_log(run_dir) if record.get("kind") == "epoch"]
    top1 = epochs[-1]["val_top1"]
    step(f"done in {time.time() - started:.0f} s")
    print(f"validation top-1 accuracy: {100 * top1:.2f}% after {len(epochs)} epochs (target >= {100 * TARGET_TOP1:.0f}%)")
    print(f"run folder: {run_dir}")
    files = [CONFIG_FILE, LOG_FILE, HDF5_FILE, last_checkpoint(run_dir).relative_to(run_dir).as_posix(), CURVES_FILE]
    print(f"  {', '.join(files)} ({run_dir / CURVES_FILE})")
    print(f"next: cd {folder.name} && make train ARGS='--optimizer.lr 0.05'")
    if top1 < TARGET_TOP1:
        print(f"demo: accuracy {100 * top1:.2f}% is below the {100 * TARGET_TOP1:.0f}% target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
