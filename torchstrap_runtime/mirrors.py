"""Mirrors of the run log: `logging.backends: [tensorboard, csv, wandb, mlflow]` (log.jsonl stays the record).

Every `Trainer.log` line is fed to each backend: its numbers as scalars named `<kind>/<key>` (`epoch/val_top1`,
`train_step/train_loss`) at the line's step; `log_hdf5` arrays become histograms where the backend has them
(TensorBoard, W&B). A resumed run continues the same backend run, without duplicated steps:

- tensorboard: `<run_dir>/tensorboard/`; the writer purges the steps from the checkpoint's step on, and the lines
  of log.jsonl (and rows of arrays.h5) at that step that the checkpoint kept are written again.
- csv: `<run_dir>/csv/<kind>.csv`, rebuilt from log.jsonl on resume.
- wandb: the run id is kept in config.json (`mirrors.wandb_id`) and the run resumed (`WANDB_MODE=offline` works
  offline; `WANDB_PROJECT` names the project, default "torchstrap"); steps W&B already has are dropped by W&B.
- mlflow: the run id is kept in config.json (`mirrors.mlflow_run_id`); tracking URI `MLFLOW_TRACKING_URI`, else a
  file store `<logging.folder>/mlruns` (MLflow 3 refuses file stores unless `MLFLOW_ALLOW_FILE_STORE=true`, which
  is then set); experiment `MLFLOW_EXPERIMENT_NAME`, default "torchstrap"; on resume, steps the run already has
  (per metric) are skipped.

None of these packages is a dependency: a missing one is a one-sentence error naming the pip package.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import param
from .errors import UserError
from .loggers import read_hdf5, read_log
from .run_folder import CONFIG_FILE, CSV_DIR, HDF5_FILE, LOG_FILE, MLRUNS_DIR, TENSORBOARD_DIR, write_json_atomic

BACKENDS = ("tensorboard", "csv", "wandb", "mlflow")   # the choices of logging.backends


class MirrorError(UserError):
    """A backend that cannot start (its package missing): one sentence for the user."""


def _require(module: str, pip_name: str, backend: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MirrorError(f"logging.backends has {backend}, which needs the package {pip_name}: "
                          f"pip install {pip_name} (or remove {backend} from logging.backends)") from None


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log line as `{<kind>/<key>: value}` (epoch, step, time and non-numbers left out)."""
    kind = record.get("kind")
    prefix = f"{kind}/" if isinstance(kind, str) and kind else ""
    out = {}
    for key, value in record.items():
        if key in ("epoch", "step", "time", "kind") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[prefix + key] = float(value)
    return out


def _update_run_record(run_dir: Path, key: str, value: Any) -> None:
    """Set `config.json["mirrors"][key]` (atomically), so a resumed run finds the same backend run."""
    path = run_dir / CONFIG_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    record.setdefault("mirrors", {})[key] = value
    write_json_atomic(path, record)


def _run_record(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


class TensorBoardMirror:
    def __init__(self, run_dir: Path, resume_step: int | None):
        _require("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resume_step, flush_secs=30)
        if resume_step is not None:   # what the purge removed but the checkpoint kept: the lines at resume_step
            for record in read_log(run_dir / LOG_FILE):
                if record.get("step", -1) >= resume_step and record.get("kind") != "end":
                    self.log(record)
            self._replay_arrays(run_dir, resume_step)

    def _replay_arrays(self, run_dir: Path, resume_step: int) -> None:
        if not (run_dir / HDF5_FILE).exists():
            return
        arrays = read_hdf5(run_dir)
        for name, rows in arrays.items():
            if name.endswith(("__step", "__epoch")) or f"{name}__step" not in arrays:
                continue
            for row, step in zip(rows, arrays[f"{name}__step"]):
                if step >= resume_step:
                    self.writer.add_histogram(name, row, int(step))

    def log(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        if record.get("kind") == "epoch":
            self.writer.flush()   # a killed run keeps its epochs (its steps after the checkpoint are purged anyway)

    def log_arrays(self, arrays: dict[str, np.ndarray], step: int, epoch: int) -> None:
        for name, array in arrays.items():
            self.writer.add_histogram(name, array, step)

    def close(self, finished: bool) -> None:
        self.writer.close()


class CSVMirror:
    """`csv/<kind>.csv`: one row per log line of that kind; a new key rewrites the file with a wider header."""

    def __init__(self, run_dir: Path, resume_step: int | None):
        self.folder = run_dir / CSV_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, tuple[Any, csv.DictWriter, list[str]]] = {}
        if resume_step is not None:   # rebuilt from the (already cut back) log
            for path in self.folder.glob("*.csv"):
                path.unlink()
            for record in read_log(run_dir / LOG_FILE):
                self.log(record)

    def log(self, record: dict[str, Any]) -> None:
        kind = str(record.get("kind") or "log")
        if kind == "end":
            return
        row = {k: v for k, v in record.items() if k != "kind" and not isinstance(v, (list, dict))}
        entry = self.files.get(kind)
        if entry is None or not set(row) <= set(entry[2]):
            entry = self._open(kind, list(dict.fromkeys([*(entry[2] if entry else []), *row])))
        entry[1].writerow(row)

    def _open(self, kind: str, columns: list[str]):
        path = self.folder / f"{kind}.csv"
        if kind in self.files:
            self.files[kind][0].close()
        rows = list(csv.DictReader(open(path, newline=""))) if path.exists() else []
        f = open(path, "w", newline="", buffering=1)
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        self.files[kind] = (f, writer, columns)
        return self.files[kind]

    def log_arrays(self, arrays: dict[str, np.ndarray], step: int, epoch: int) -> None:
        pass   # arrays stay in arrays.h5

    def close(self, finished: bool) -> None:
        for f, _, _ in self.files.values():
            f.close()
        self.files = {}


class WandbMirror:
    def __init__(self, run_dir: Path, resume_step: int | None):
        wandb = self.wandb = _require("wandb", "wandb", "wandb")
        record = _run_record(run_dir)
        run_id = record.get("mirrors", {}).get("wandb_id")
        if run_id is None:
            run_id = secrets.token_hex(4)   # W&B ids: 8 characters of [0-9a-z]
            _update_run_record(run_dir, "wandb_id", run_id)
        config = record.get("config", {})
        self.run = wandb.init(id=run_id, resume="allow", dir=str(run_dir), name=run_dir.name, config=config,
                              project=os.environ.get("WANDB_PROJECT", "torchstrap"),
                              tags=config.get("logging", {}).get("tags") or None, reinit="create_new")

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log(values, step=int(record.get("step", 0)))

    def log_arrays(self, arrays: dict[str, np.ndarray], step: int, epoch: int) -> None:
        self.run.log({name: self.wandb.Histogram(np.asarray(a, dtype=np.float64).ravel()) for name, a in arrays.items()},
                     step=step)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


class MLflowMirror:
    def __init__(self, run_dir: Path, resume_step: int | None):
        _require("mlflow", "mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.parent / MLRUNS_DIR).resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow 3 asks for it: the file store is ours
        self.client = client = MlflowClient(tracking_uri=uri)
        self.last_steps: dict[str, int] = {}
        record = _run_record(run_dir)
        self.run_id = record.get("mirrors", {}).get("mlflow_run_id")
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "torchstrap")
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            tags = {f"tag.{t}": "" for t in record.get("config", {}).get("logging", {}).get("tags") or []}
            self.run_id = client.create_run(experiment_id, run_name=run_dir.name, tags=tags).info.run_id
            _update_run_record(run_dir, "mlflow_run_id", self.run_id)
            params = [(k, v) for section, values in record.get("config", {}).items() if isinstance(values, dict)
                      for k, v in ((f"{section}.{key}", value) for key, value in values.items())]
            from mlflow.entities import Param as MlflowParam

            for i in range(0, len(params), 100):
                client.log_batch(self.run_id, params=[MlflowParam(k, str(v)[:6000]) for k, v in params[i:i + 100]])
        else:
            client.update_run(self.run_id, status="RUNNING")
            for key in client.get_run(self.run_id).data.metrics:   # a killed run logged steps past its checkpoint
                self.last_steps[key] = max(m.step for m in client.get_metric_history(self.run_id, key))

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(record.get("step", 0)), int(1000 * time.time())
        metrics = [Metric(k, v, now, step) for k, v in scalars(record).items() if step > self.last_steps.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_arrays(self, arrays: dict[str, np.ndarray], step: int, epoch: int) -> None:
        pass   # MLflow has no histograms

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")


MIRRORS = {"tensorboard": TensorBoardMirror, "csv": CSVMirror, "wandb": WandbMirror, "mlflow": MLflowMirror}


class Mirrors:
    """The backends of `logging.backends`, fed by `Trainer.log` / `log_hdf5` (rank 0)."""

    def __init__(self, run_dir: Path, backends: list[str], resume_step: int | None = None):
        unknown = [b for b in backends if b not in MIRRORS]
        if unknown:
            raise MirrorError(f"logging.backends: unknown backend {unknown[0]!r} (expected {', '.join(BACKENDS)})")
        self.backends = []
        try:
            for name in dict.fromkeys(backends):
                self.backends.append(MIRRORS[name](Path(run_dir), resume_step))
        except BaseException:
            self.close(finished=False)
            raise

    def log(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "end":
            return
        for backend in self.backends:
            backend.log(record)

    def log_arrays(self, arrays: dict[str, Any], step: int, epoch: int) -> None:
        if not self.backends:
            return
        arrays = {k: (v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                  for k, v in arrays.items()}
        for backend in self.backends:
            backend.log_arrays(arrays, step, epoch)

    def close(self, finished: bool = False) -> None:
        backends, self.backends = self.backends, []
        for backend in backends:
            backend.close(finished)


@param("logging.backends")
def open_mirrors(run_dir: Path, resume_step: int | None, backends: list[str]) -> Mirrors | None:
    """The mirrors of `logging.backends` for a run folder (None when there are none); `resume_step` is the
    checkpoint's step when the run resumes."""
    if not backends:
        return None
    return Mirrors(run_dir, backends, resume_step)
