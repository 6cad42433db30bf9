"""No host sync per step: the loop reads losses and sums back only at log points, checkpoints and epoch ends.

On the CPU every Python-level way of reading a tensor's value on the host (`.item()`, `float()`, `.tolist()`,
`.numpy()`, `bool()`, ...) is counted while the steps between two log points run; on CUDA,
`torch.cuda.set_sync_debug_mode("error")` makes any synchronising call raise during those steps.
"""

from __future__ import annotations

import pytest
import torch

from torchstrap_runtime.config import set_values
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.step_losses import StepLosses
from torchstrap_runtime.trainer import NonFiniteLoss

from test_trainer import TinyTrainer, config  # noqa: F401  (config: autouse fixture)

READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__format__")


class HostReads:
    """Class-level wrappers of `torch.Tensor`'s host reads that record the calls made while `on` is true."""

    def __init__(self, monkeypatch) -> None:
        self.on, self.calls, self.where = False, [], ""
        self.optimizer = None
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self.counting(name, getattr(torch.Tensor, name)))

    def host_side(self, tensor) -> bool:
        """Tensors on the CPU whatever the parameters' device (reading them is no sync on CUDA): the step counts
        of Adam/AdamW (unless fused)."""
        states = self.optimizer.state.values() if self.optimizer is not None else ()
        return any(state.get("step") is tensor for state in states)

    def counting(self, name, original):
        def read(tensor, *args, **kwargs):
            if self.on and not self.host_side(tensor):
                self.calls.append((name, self.where))
            return original(tensor, *args, **kwargs)
        return read


class Watched(TinyTrainer):
    """Counts host reads from the start of each step that is not a log point until the next read point
    (`check_losses`: a log point, a checkpoint or the epoch's end), and during evaluation's batches."""

    reads: HostReads

    def initialize_logger(self) -> None:
        """The steps record hashes each batch while the loader's batch is on the host (no device read; a batch
        already on a device is not hashed, see steps_record.StepsRecord.batch): its reads are not counted."""
        super().initialize_logger()
        hash_batch = self.steps_record.batch

        def uncounted(trainer) -> None:
            assert all(t.device.type == "cpu" for t in trainer.data)
            on, self.reads.on = self.reads.on, False
            hash_batch(trainer)
            self.reads.on = on

        self.steps_record.batch = uncounted

    def before_train_step(self) -> None:
        self.reads.optimizer = self.optimizer
        self.reads.where = f"train step {self.step}"
        self.reads.on = self.step % self.log_every != 0

    def check_losses(self) -> None:
        self.reads.on = False
        super().check_losses()

    def before_eval_step(self) -> None:
        self.reads.where, self.reads.on = "eval step", True

    def after_eval_epoch(self) -> None:
        self.reads.on = False
        super().after_eval_epoch()


@pytest.mark.parametrize("settings", [
    {},
    {"training.grad_clip": 1.0, "training.ema_decay": 0.9, "training.accumulate": 2, "training.dtype": "bfloat16",
     "logging.progress": True, "optimizer.name": "adamw"},
], ids=["plain", "clip-ema-accumulate-bf16-bar-adamw"])
def test_no_host_read_between_log_points(monkeypatch, settings):
    set_values({"logging.run_id": "syncs", "logging.log_every": 3, "training.epochs": 2, **settings})
    trainer = Watched()
    Watched.reads = HostReads(monkeypatch)
    trainer.run()
    calls = trainer.reads.calls
    assert calls == [], f"host reads between log points: {calls[:10]}"
    steps = [row for row in read_log(trainer.run_dir / "log.jsonl") if row.get("kind") == "train_step"]
    assert [row["step"] for row in steps] == [0, 3, 6]  # the log points still log
    epochs = [row for row in read_log(trainer.run_dir / "log.jsonl") if row.get("kind") == "epoch"]
    assert all(isinstance(row["train_loss"], float) and "val_top1" in row for row in epochs)


def test_the_counter_sees_a_per_step_read(monkeypatch):
    """The watch itself: a hook that reads the loss every step is caught."""
    class ReadsEachStep(Watched):
        def after_train_step(self) -> None:
            super().after_train_step()
            self.last = float(self.loss)

    set_values({"logging.run_id": "reads", "logging.log_every": 3, "training.epochs": 1})
    trainer = ReadsEachStep()
    ReadsEachStep.reads = HostReads(monkeypatch)
    trainer.run()
    assert ("__float__", "train step 1") in trainer.reads.calls


def test_epoch_loss_is_the_mean_of_the_step_losses(monkeypatch):
    class Kept(TinyTrainer):
        def after_train_step(self) -> None:
            self.seen.append(float(self.loss))
            super().after_train_step()

    set_values({"logging.run_id": "mean", "logging.log_every": 0, "training.epochs": 1})
    trainer = Kept()
    trainer.seen = []
    record = trainer.run()
    assert record["train_loss"] == sum(trainer.seen) / len(trainer.seen)


class GoesNaN(TinyTrainer):
    def train_step(self) -> torch.Tensor:
        loss = super().train_step()
        return loss * float("inf") if self.step == 5 else loss


@pytest.mark.parametrize("read_point", ["log point", "checkpoint", "epoch end"])
def test_a_non_finite_loss_found_later_names_its_step(tmp_path, read_point):
    """Found at the next read point, the message names the first bad step; no checkpoint holds what it did."""
    log_every, checkpoint_every = {"log point": (3, 0), "checkpoint": (4, 2), "epoch end": (0, 0)}[read_point]
    set_values({"logging.run_id": "nan", "logging.log_every": log_every, "logging.checkpoint_every": checkpoint_every})
    trainer = GoesNaN()
    with pytest.raises(NonFiniteLoss, match=r"the training loss is (inf|nan) at epoch 1, step 5: .*last\.pt holds"):
        trainer.run()
    assert trainer.step == {"log point": 6, "checkpoint": 6, "epoch end": 8}[read_point]  # where it was found
    state = torch.load(trainer.checkpoint_path, weights_only=False)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())


def test_step_losses_read_back_in_order_across_compaction():
    losses = StepLosses(compact_every=4)
    values = [float(v) for v in range(10)]
    for step, value in enumerate(values):
        losses.add(step + 100, torch.tensor(value))
    assert len(losses.stacked) == 2 and len(losses.recent) == 2
    assert losses.read() == [(step + 100, value) for step, value in enumerate(values)]
    assert losses.read() == [] and len(losses) == 0
    losses.add(7, torch.tensor(float("nan")))
    losses.add(8, torch.tensor(1.0))
    step, value = losses.first_non_finite()
    assert step == 7 and value != value


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_cuda_sync_between_log_points():
    class OnGPU(TinyTrainer):
        def before_train_step(self) -> None:
            torch.cuda.set_sync_debug_mode("error" if self.step % self.log_every != 0 else 0)

        def check_losses(self) -> None:
            torch.cuda.set_sync_debug_mode(0)
            super().check_losses()

    set_values({"logging.run_id": "gpu", "logging.log_every": 3, "training.device": "cuda",
                "training.dtype": "bfloat16"})
    try:
        OnGPU().run()
    finally:
        torch.cuda.set_sync_debug_mode(0)
