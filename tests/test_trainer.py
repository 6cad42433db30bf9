"""The Trainer base: hook order (compared to the spec), eval_only, scheduler stepping, logs, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

from torchstrap_runtime.config import reset_config, set_values
from torchstrap_runtime.errors import UserError
from torchstrap_runtime.loggers import read_hdf5, read_log
from torchstrap_runtime.checkpoint import load_torch
from torchstrap_runtime.trainer import MEASURED_KEYS, Trainer

from workflow_spec import spec_epoch, spec_hooks  # docs/workflow.txt, the spec's hook order

SPEC_INIT, SPEC_LOOP = spec_hooks()
HOOKS = SPEC_INIT + SPEC_LOOP
SPEC_EPOCH = spec_epoch(train_batches=4, eval_batches=2)  # TinyTrainer: 64 samples / 16, 32 / 16


def make_batches(n: int, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


class SeededBatches:
    """An in-memory loader with FFCV-like `set_epoch(epoch, start_batch)`: order depends on (seed, epoch)."""

    def __init__(self, n: int, batch: int, seed: int = 0):
        self.batches = make_batches(n, batch)
        self.seed, self.epoch, self.start = seed, 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.batches))
        return (self.batches[i] for i in order[self.start:])


class TinyTrainer(Trainer):
    """In-memory data and a small MLP; records every hook call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        super().__init__()

    def initialize_model(self) -> None:
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16), torch.nn.BatchNorm1d(16),
                                         torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def initialize_train_loader(self) -> None:
        self.train_loader = SeededBatches(64, 16)

    def initialize_val_loader(self) -> None:
        self.val_loader = make_batches(32, 16, seed=1)


def recording(cls: type) -> type:
    """A subclass of `cls` whose every hook appends its name to `self.calls` before running."""
    def wrap(name):
        def hook(self, *args, **kwargs):
            self.calls.append(name)
            return getattr(cls, name)(self, *args, **kwargs)
        hook.__name__ = name
        return hook
    return type(f"Recording{cls.__name__}", (cls,), {name: wrap(name) for name in HOOKS})


@pytest.fixture(autouse=True)
def config(tmp_path):
    reset_config(keep_sections=True)
    set_values({"logging.folder": str(tmp_path), "logging.progress": False, "model.num_classes": 2,
                "training.epochs": 2, "optimizer.lr": 0.05, "logging.log_every": 1})
    yield
    reset_config(keep_sections=True)


def test_hook_order_matches_the_spec():
    trainer = recording(TinyTrainer)()
    assert trainer.calls == SPEC_INIT
    trainer.calls.clear()
    trainer.run()
    assert trainer.calls == SPEC_EPOCH * 2  # SPEC_EPOCH: read from docs/workflow.txt


def test_eval_each_epoch_false_skips_evaluation():
    set_values({"logging.eval_each_epoch": False})
    trainer = recording(TinyTrainer)()
    trainer.run()
    assert "eval_step" not in trainer.calls and trainer.calls.count("train_step") == 8


def test_eval_only_skips_train_loader_optimizer_and_scheduler():
    set_values({"training.eval_only": True})
    trainer = recording(TinyTrainer)()
    assert trainer.calls == ["initialize_model", "initialize_val_loader", "load_checkpoint", "initialize_metrics",
                             "initialize_criterion", "initialize_logger"]
    assert trainer.train_loader is None and trainer.optimizer is None and trainer.scheduler is None
    record = trainer.run()
    assert "train_step" not in trainer.calls and 0.0 <= record["val_top1"] <= 1.0


def test_step_schedulers_step_per_epoch_others_per_step():
    set_values({"scheduler.name": "step", "scheduler.step_size": 1, "scheduler.gamma": 0.5, "training.epochs": 3})
    trainer = TinyTrainer()
    trainer.run()
    train_lrs = [r["lr"] for r in read_log(trainer.run_dir) if r.get("kind") == "train_step"]
    assert train_lrs == pytest.approx([0.05] * 4 + [0.025] * 4 + [0.0125] * 4)

    set_values({"scheduler.name": "cosine", "scheduler.warmup_epochs": 0.0, "logging.run_id": "cosine"})
    trainer = TinyTrainer()
    trainer.run()
    train_lrs = [r["lr"] for r in read_log(trainer.run_dir) if r.get("kind") == "train_step"]
    assert len(set(train_lrs[:4])) == 4  # changes within the first epoch
    assert train_lrs == sorted(train_lrs, reverse=True)


def test_log_and_log_hdf5_files(tmp_path):
    class Logging(TinyTrainer):
        def after_train_step(self):
            super().after_train_step()
            self.log({"note": f"step {self.step}", "tensor": torch.tensor(1.5)})
            self.log_hdf5({"weights": self.model[1].weight.detach(), "scalar": float(self.step)})

    trainer = Logging()
    trainer.run()
    rows = read_log(trainer.run_dir)
    notes = [r for r in rows if "note" in r]
    assert [r["step"] for r in notes] == list(range(8)) and all(r["tensor"] == 1.5 for r in notes)
    assert all({"epoch", "step", "time"} <= r.keys() for r in rows)
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and all("val_top1" in r and "train_loss" in r for r in epochs)
    arrays = read_hdf5(trainer.run_dir)
    assert arrays["weights"].shape == (8, 16, 192) and arrays["scalar"].tolist() == list(range(8))
    assert arrays["weights__step"].tolist() == list(range(8)) and arrays["weights__epoch"].tolist() == [0] * 4 + [1] * 4
    np.testing.assert_array_equal(arrays["weights"][-1], trainer.model[1].weight.detach().numpy())


def test_deterministic_turns_on_torchs_algorithms_and_ops_without_one_name_themselves():
    set_values({"training.deterministic": True})
    try:
        TinyTrainer()
        assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        with pytest.raises(RuntimeError, match="put_ does not have a deterministic implementation"):
            torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    set_values({"training.deterministic": False})
    TinyTrainer()
    assert not torch.are_deterministic_algorithms_enabled(), "off by default"


def test_run_folder_holds_config_checkpoint_and_curves(tmp_path):
    set_values({"logging.run_id": "", "training.seed": 7})
    trainer = TinyTrainer()
    trainer.run()
    run = trainer.run_dir
    assert run.parent == tmp_path and len(run.name) > 10  # generated id
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["optimizer"]["lr"] == 0.05 and saved["config"]["scheduler"]["name"] == "cosine"
    assert saved["seeds"]["training.seed"] == 7
    assert saved["versions"]["torch"] == torch.__version__ and "torchstrap_runtime" in saved["versions"]
    assert set(saved["git"]) == {"commit", "dirty"}
    assert saved["versions"]["numpy"] == np.__version__
    assert {"ffcv", "numba", "cuda", "cudnn"} <= saved["versions"].keys()
    assert saved["gpus"] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    frozen = (run / "requirements.txt").read_text().splitlines()  # what `pip freeze` lists, to rebuild the environment
    assert f"torch=={torch.__version__}" in frozen and f"numpy=={np.__version__}" in frozen
    state = load_torch(run / "checkpoints" / "last.pt")  # weights_only=True
    assert state["epoch"] == 2 and state["step"] == 8
    assert (run / "curves.png").stat().st_size > 1000
    confusion = read_hdf5(run, ["val_confusion"])
    assert confusion["val_confusion"].shape == (2, 2, 2)  # one 2x2 matrix per epoch
    assert confusion["val_confusion"].sum(axis=(1, 2)).tolist() == [32, 32]
    epochs = [r for r in read_log(run) if r.get("kind") == "epoch"]
    diagonal = np.trace(confusion["val_confusion"][-1]) / 32
    assert diagonal == pytest.approx(epochs[-1]["val_top1"])


def test_load_from_restores_the_model_and_optionally_epoch(tmp_path):
    set_values({"logging.run_id": "first"})
    first = TinyTrainer()
    first.run()
    set_values({"logging.run_id": "second", "model.load_from": str(first.checkpoint_path),
                "model.load_epoch": True, "training.epochs": 3})
    second = TinyTrainer()
    assert second.epoch == 2
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    second.run()
    assert [r["epoch"] for r in read_log(second.run_dir) if r.get("kind") == "epoch"] == [2]


def run_straight_then_stopped(trainer_class: type, stop_after_step: int = 5) -> Trainer:
    """Run `trainer_class` for 3 epochs as run "straight", then as run "interrupted" stopped (checkpointed) after
    step `stop_after_step`; the straight trainer."""
    set_values({"logging.run_id": "straight", "training.epochs": 3})
    straight = trainer_class()
    straight.run()

    class Stops(trainer_class):
        def after_train_step(self):
            super().after_train_step()
            if self.step == stop_after_step:
                self.request_stop()

    set_values({"logging.run_id": "interrupted"})
    Stops().run()
    return straight


def test_interrupted_run_resumes_exactly(tmp_path):
    straight = run_straight_then_stopped(TinyTrainer)
    assert load_torch(tmp_path / "interrupted" / "checkpoints" / "last.pt")["batch"] == 2
    resumed = TinyTrainer()  # same run id: resumes from last.pt
    assert (resumed.epoch, resumed.start_batch, resumed.step) == (1, 2, 6)
    resumed.run()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in MEASURED_KEYS} for r in rows]
    assert strip(read_log(resumed.run_dir)) == strip(read_log(straight.run_dir))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_dtypes_train(dtype):
    set_values({"training.dtype": dtype, "training.epochs": 1})
    if dtype == "float16" and not torch.cuda.is_available():  # its loss scaling needs CUDA: refused on the CPU
        with pytest.raises(UserError, match="training.dtype float16 needs a CUDA GPU"):
            TinyTrainer()
        return
    record = TinyTrainer().run()
    assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])


def test_killed_run_leaves_parseable_logs(tmp_path):
    script = textwrap.dedent(f"""
        import time, torch
        from torchstrap_runtime.loggers import JSONLogger, HDF5Logger
        json_log, h5_log = JSONLogger({str(tmp_path / 'log.jsonl')!r}), HDF5Logger({str(tmp_path / 'arrays.h5')!r})
        for step in range(10**9):
            json_log.log({{"loss": 1.0 / (step + 1), "text": "x" * 200}}, step=step)
            h5_log.log({{"a": torch.full((64, 64), float(step))}}, step=step)
            if step == 50:
                print("ready", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    rows = read_log(tmp_path)
    assert len(rows) > 50 and [r["step"] for r in rows] == list(range(len(rows)))
    with h5py.File(tmp_path / "arrays.h5", "r") as f:
        assert f["a"].shape[0] > 50


def test_learnable_criterion_parameters_are_optimized_and_resume(tmp_path):
    class Embedding(TinyTrainer):
        def initialize_model(self):
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 8))

        def eval_step(self):  # embeddings have no top-k accuracy; keep the default loss bookkeeping simple
            pass

        def after_eval_epoch(self):
            pass

    set_values({"criterion.name": "ArcFaceLoss", "criterion.params": {"num_classes": 2, "embedding_size": 8},
                "logging.run_id": "arcface", "training.epochs": 2})
    trainer = Embedding()
    weight = trainer.criterion.loss.W if hasattr(trainer.criterion, "loss") else next(trainer.criterion.parameters())
    before = weight.detach().clone()
    assert any(weight is p for group in trainer.optimizer.param_groups for p in group["params"])
    trainer.run()
    assert not torch.equal(before, weight.detach())  # the loss's own weights were trained
    set_values({"training.epochs": 3})
    resumed = Embedding()  # resumes: optimizer state has the criterion's group too
    assert resumed.epoch == 2 and len(resumed.optimizer.param_groups) == 2
    assert torch.equal(next(resumed.criterion.parameters()).detach(), weight.detach())
    resumed.run()


def test_hdf5_writer_thread_keeps_rows_in_order_and_reports_errors(tmp_path):
    from torchstrap_runtime.loggers import HDF5Logger

    logger = HDF5Logger(tmp_path / "a.h5")
    weights = torch.zeros(4, 4)
    for step in range(50):
        weights += 1  # changed in place after logging: the logged row must keep its value
        logger.log({"w": weights, "s": step}, step=step, epoch=step // 10)
        if step % 3 == 0:  # a key in some calls only, in rows of a chunk each (the writer batches queued calls)
            logger.log({"big": np.full((128, 128), step, dtype=np.float32)}, step=step)
    assert logger.row_counts()["w"] == 50  # drains the queue first
    arrays = read_hdf5(tmp_path / "a.h5")
    assert arrays["w"][:, 0, 0].tolist() == list(range(1, 51)) and arrays["s__epoch"].tolist() == [s // 10 for s in range(50)]
    assert arrays["big__step"].tolist() == list(range(0, 50, 3)) == arrays["big"][:, 5, 7].tolist()
    logger.log({"w": torch.zeros(3)}, step=50)  # wrong shape: raised by the next call, naming the dataset
    with pytest.raises(RuntimeError, match="'w' rows have shape"):
        logger.drain()
    logger.close()
