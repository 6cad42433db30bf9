"""What a run folder records about where it came from: run ids, `config.json` (every resolved value,
the config files read, seeds, versions, the GPUs, the experiment's git state, the command) and
`requirements.txt` (the installed packages, to rebuild the environment)."""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import secrets
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import config_as_dict, config_files
from .distributed import slurm_job_id
from .errors import UserError
from .run_folder import CONFIG_FILE, REQUIREMENTS_FILE, last_checkpoint, write_json_atomic, write_text_atomic

# keys a run may resume with changed: they do not change what the steps already taken computed
RESUMABLE_KEYS = ("training.epochs", "training.eval_only", "training.resume_changed", "data.num_workers", "logging.*")


def new_run_id() -> str:
    """A fresh, sortable run id: date-time plus 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def run_record(trainer_class: type, train_loader: Any, world_size: int) -> dict[str, Any]:
    """What `config.json` holds: every resolved hyper-parameter, the config files read, versions and the
    experiment's git state."""
    repo, config = find_experiment_root(trainer_class), config_as_dict()
    seeds = {f"{section}.{key}": value for section, params in config.items() for key, value in params.items()
             if "seed" in key}
    return {
        "config": config,
        "config_files": config_files(),  # read in this order, before the command line's values
        "seeds": {**seeds, "train_loader_resolved": resolved_loader_seeds(train_loader)},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "torchstrap_runtime": __version__, "template": template_version(repo), **library_versions()},
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git": git_state(repo),
        "world_size": world_size,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "trainer": trainer_location(trainer_class),  # what `torchstrap verify` imports to re-run
        "slurm_job_id": slurm_job_id(),  # `torchstrap runs` asks sacct about it
    }


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries a run's numbers depend on besides torch (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in ("ffcv", "numba", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return versions


def installed_packages() -> list[str]:
    """`pip freeze`'s lines, read from the installed distributions' metadata (no pip process): `name==version`,
    or `name @ URL` for a package installed from a file, folder or VCS URL (PEP 610 direct_url.json)."""
    lines = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or name.lower() in lines:
            continue  # a distribution earlier on sys.path wins, as for imports
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if "vcs_info" in direct:
            vcs = direct["vcs_info"]
            lines[name.lower()] = f"{name} @ {vcs['vcs']}+{direct['url']}@{vcs['commit_id']}"
        elif direct.get("url") and not direct.get("dir_info", {}).get("editable"):
            lines[name.lower()] = f"{name} @ {direct['url']}"
        else:
            lines[name.lower()] = f"{name}=={dist.version}"
    return sorted(lines.values(), key=str.lower)


def write_requirements(run_dir: Path) -> None:
    """requirements.txt of the run folder: `pip install -r` it (with the CUDA build of torch) to rebuild."""
    write_text_atomic(run_dir / REQUIREMENTS_FILE, "\n".join(installed_packages()) + "\n")


def trainer_location(cls: type) -> dict[str, str | None]:
    """`{"class": "package.module.Name", "path": folder to put on sys.path to import it}`."""
    import inspect

    try:
        path = str(Path(inspect.getfile(cls)).resolve().parents[cls.__module__.count(".")])
    except (TypeError, OSError, IndexError):
        path = None
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "path": path}


def resolved_loader_seeds(loader: Any) -> dict[str, Any] | None:
    """The seeds a seeded loader actually uses (None seeds drawn at build time), to replay the run."""
    if not hasattr(loader, "augmentation_seeds"):
        return None
    return {"order": loader.seed, "augmentations": loader.augmentation_seeds}


def find_experiment_root(cls: type) -> Path | None:
    """The folder holding `.copier-answers.yml` above the module that defines `cls` (or the cwd)."""
    import inspect

    try:
        start = Path(inspect.getfile(cls)).resolve().parent
    except (TypeError, OSError):
        start = Path.cwd()
    for folder in (start, *start.parents, Path.cwd(), *Path.cwd().parents):
        if (folder / ".copier-answers.yml").exists():
            return folder
    return None


def template_version(repo: Path | None) -> str | None:
    if repo is None:
        return None
    for line in (repo / ".copier-answers.yml").read_text().splitlines():
        if line.startswith("_commit:"):
            return line.split(":", 1)[1].strip()
    return None


def git_state(repo: Path | None) -> dict[str, Any]:
    """`{"commit": sha, "dirty": bool}` of the experiment's git repository (None when it is not one)."""
    if repo is None:
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def flat_config(config: dict) -> dict[str, Any]:
    """`{"section.key": value}` of a nested config, values as config.json stores them (a JSON round trip)."""
    config = json.loads(json.dumps(config, default=str))
    return {f"{section}.{key}": value for section, params in config.items() if isinstance(params, dict)
            for key, value in params.items()}


def resumable(key: str) -> bool:
    """Whether `key` may differ from the run's config.json when the run resumes (`RESUMABLE_KEYS`)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


def config_changes(run_dir: Path, resume_changed: bool) -> dict[str, list]:
    """`{key: [recorded, now]}` of the values a resuming run (one with checkpoints/last.pt) changes from its
    config.json (keys both declare). Any key outside `RESUMABLE_KEYS` is refused with a UserError listing them,
    unless `resume_changed` (training.resume_changed). {} when the run does not resume or config.json is
    unreadable."""
    record_path = Path(run_dir) / CONFIG_FILE
    if not last_checkpoint(run_dir).exists() or not record_path.exists():
        return {}
    try:
        recorded = flat_config(json.loads(record_path.read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    now = flat_config(config_as_dict())
    # a key only one side has (declared since the run started, e.g. by a template update) is not compared
    changes = {key: [recorded[key], now[key]] for key in sorted(set(recorded) & set(now)) if recorded[key] != now[key]}
    refused = [key for key in changes if not resumable(key)]
    if refused and not resume_changed:
        listed = ", ".join(f"{key} ({changes[key][0]!r} -> {changes[key][1]!r})" for key in refused)
        raise UserError(f"run {run_dir} resumes with values that differ from its {CONFIG_FILE}: {listed}; rerun "
                        f"with the recorded values, choose another logging.run_id, or set training.resume_changed "
                        f"true to resume with them (recorded in {CONFIG_FILE})")
    return changes


def record_config_changes(run_dir: Path, changes: dict[str, list], epoch: int, step: int) -> None:
    """Write the resumed run's current values into its config.json, and append `changes` (with the epoch and
    step they apply from) to its "resumed_with_changes" list."""
    path = Path(run_dir) / CONFIG_FILE
    record = json.loads(path.read_text())
    record["config"] = config_as_dict()
    record.setdefault("resumed_with_changes", []).append(
        {"epoch": epoch, "step": step, "time": datetime.datetime.now().isoformat(timespec="seconds"),
         "changed": changes})
    write_json_atomic(path, record)
