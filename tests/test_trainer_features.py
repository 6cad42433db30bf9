"""The loop's features: accumulation, best/top-k checkpoints, early stopping, EMA, torch.compile, batch limits,
fast_dev_run, eval_every, speed and memory per epoch, non-finite loss, close()."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from torchstrap_runtime.config import set_values
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.checkpoint import load_torch
from torchstrap_runtime.trainer import NonFiniteLoss, Trainer

from test_trainer import TinyTrainer, config, make_batches, recording  # noqa: F401  (config: autouse fixture)


def epochs_of(trainer: Trainer) -> list[dict]:
    return [r for r in read_log(trainer.run_dir) if r.get("kind") == "epoch"]


class NoBatchNorm(Trainer):
    """An MLP without BatchNorm (batch statistics would differ between 1 x 64 and 2 x 32) on fixed batches."""

    big_batches = make_batches(256, 64, seed=3)
    batch = 64

    def initialize_model(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16), torch.nn.Tanh(),
                                         torch.nn.Linear(16, 2))

    def initialize_train_loader(self) -> None:  # the same samples in the same order, cut in `batch`-sized pieces
        self.train_loader = [(x[i:i + self.batch], y[i:i + self.batch]) for x, y in self.big_batches
                             for i in range(0, 64, self.batch)]

    def initialize_val_loader(self) -> None:
        self.val_loader = make_batches(32, 16, seed=1)


def test_accumulate_2_x_batch_32_matches_batch_64():
    set_values({"logging.run_id": "b64", "training.epochs": 2, "scheduler.name": "cosine"})
    whole = NoBatchNorm()
    whole.run()
    halves = type("Halves", (NoBatchNorm,), {"batch": 32})
    set_values({"logging.run_id": "b32x2", "training.accumulate": 2})
    accumulated = halves()
    assert accumulated.steps_per_epoch == whole.steps_per_epoch == 4
    accumulated.run()
    for a, b in zip(whole.model.state_dict().values(), accumulated.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [r["lr"] for r in epochs_of(whole)] == pytest.approx([r["lr"] for r in epochs_of(accumulated)])
    set_values({"logging.run_id": "b32", "training.accumulate": 1})
    plain = halves()  # without accumulation, twice the steps: a different result (the test can fail)
    plain.run()
    assert not torch.allclose(whole.model[1].weight, plain.model[1].weight, atol=1e-4)


class Scored(TinyTrainer):
    """Evaluation gives a chosen score per epoch."""

    scores = [0.1, 0.5, 0.3, 0.4, 0.2, 0.9, 0.9]

    def after_eval_epoch(self) -> None:
        super().after_eval_epoch()
        self.epoch_record["score"] = self.scores[self.epoch]


def test_best_and_top_k_checkpoints_and_early_stopping(tmp_path):
    set_values({"logging.run_id": "best", "training.epochs": 7, "logging.monitor": "score", "logging.save_top_k": 2,
                "training.patience": 2})
    trainer = Scored()
    trainer.run()
    folder = tmp_path / "best" / "checkpoints"
    assert [r["score"] for r in epochs_of(trainer)] == [0.1, 0.5, 0.3, 0.4]  # 2 epochs without beating 0.5
    assert trainer.finished and trainer.epoch == 4
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "epoch_0001.pt", "epoch_0003.pt", "last.pt"]
    assert load_torch(folder / "best.pt")["epoch"] == 2 and load_torch(folder / "epoch_0003.pt")["epoch"] == 4
    assert load_torch(folder / "last.pt")["best"] == [[0.5, 1], [0.4, 3]]

    set_values({"logging.run_id": "min", "logging.monitor_mode": "min", "logging.save_top_k": 1, "training.patience": 0})
    trainer = Scored()
    trainer.run()
    assert sorted(p.name for p in (tmp_path / "min" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert load_torch(tmp_path / "min" / "checkpoints" / "best.pt")["epoch"] == 1  # 0.1 after epoch 0

    set_values({"logging.run_id": "x", "logging.monitor": ""})
    with pytest.raises(ValueError, match="training.patience is 3 but logging.monitor is empty"):
        set_values({"training.patience": 3})
        Scored()


def test_ema_weights_are_evaluated_and_saved(tmp_path):
    set_values({"logging.run_id": "ema", "training.ema_decay": 0.9, "training.epochs": 1})
    trainer = TinyTrainer()
    record = trainer.run()
    state = load_torch(trainer.checkpoint_path)
    assert state["ema"].keys() == state["model"].keys()
    assert not torch.equal(state["ema"]["1.weight"], state["model"]["1.weight"])
    for key, value in trainer.model.state_dict().items():  # the live weights came back after evaluation
        assert torch.equal(value, state["model"][key])
    ema_model = copy.deepcopy(trainer.model).eval()
    ema_model.load_state_dict(state["ema"])
    inputs = torch.cat([x for x, _ in trainer.val_loader])
    targets = torch.cat([y for _, y in trainer.val_loader])
    with torch.no_grad():
        top1 = (ema_model(inputs).argmax(1) == targets).float().mean().item()
    assert record["val_top1"] == pytest.approx(top1)


@pytest.mark.slow  # inductor compiles C++ for the forward, backward and eval graphs: minutes on 2 shared cores
def test_compile_trains_on_cpu(tmp_path):
    set_values({"logging.run_id": "compiled", "training.compile": True, "training.epochs": 1})
    trainer = TinyTrainer()
    record = trainer.run()
    assert type(trainer.model).__name__ == "OptimizedModule" and torch.isfinite(torch.tensor(record["val_loss"]))
    assert all(not key.startswith("_orig_mod") for key in load_torch(trainer.checkpoint_path)["model"])


def test_batch_limits_eval_every_and_fast_dev_run(tmp_path):
    set_values({"logging.run_id": "limited", "training.limit_train_batches": 3, "training.limit_val_batches": 1,
                "training.epochs": 3, "logging.eval_every": 2})
    trainer = recording(TinyTrainer)()
    trainer.run()
    assert trainer.calls.count("train_step") == 9 and trainer.calls.count("eval_step") == 2  # epochs 2 and 3
    assert ["val_top1" in r for r in epochs_of(trainer)] == [False, True, True]

    set_values({"logging.run_id": "dev", "training.fast_dev_run": True, "training.limit_train_batches": 0,
                "training.limit_val_batches": 0})
    trainer = recording(TinyTrainer)()
    trainer.run()
    assert trainer.calls.count("train_step") == 1 and trainer.calls.count("eval_step") == 1
    assert (tmp_path / "dev").is_dir() and list((tmp_path / "dev").iterdir()) == []


def test_speed_and_memory_are_logged_and_printed(tmp_path, capsys):
    set_values({"logging.run_id": "speed", "logging.progress": True, "training.epochs": 1})
    trainer = TinyTrainer()
    trainer.run()
    (row,) = epochs_of(trainer)
    assert row["images_per_s"] > 0 and 0 <= row["data_wait_share"] <= 1 and row["peak_memory_mb"] > 10
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "images_per_s" in printed and "data_wait_share" in printed and "peak_memory_mb" in printed


class GoesNaN(TinyTrainer):
    def train_step(self) -> torch.Tensor:
        loss = super().train_step()
        return loss * float("nan") if self.step == 5 else loss


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    set_values({"logging.run_id": "nan"})
    trainer = GoesNaN()
    with pytest.raises(NonFiniteLoss, match=r"the training loss is nan at epoch 1, step 5: .*last\.pt holds"):
        trainer.run()
    state = load_torch(trainer.checkpoint_path)
    assert (state["epoch"], state["step"]) == (1, 4)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert trainer.json_logger is None  # run() closed the loggers on the way out

    set_values({"logging.run_id": "nan_allowed", "training.stop_on_nan": False})
    GoesNaN().run()  # trains on (the weights become NaN), no error
    assert torch.isnan(load_torch(tmp_path / "nan_allowed" / "checkpoints" / "last.pt")["model"]["1.weight"]).all()


def test_close_is_idempotent():
    set_values({"logging.run_id": "closing", "training.epochs": 1})
    trainer = TinyTrainer()
    trainer.close()
    trainer.close()
    assert trainer.json_logger is None and trainer.hdf5_logger is None


def test_a_train_step_that_returns_nothing_is_explained():
    class OldStyle(TinyTrainer):
        def train_step(self) -> None:  # forgets to return the loss
            super().train_step()

    set_values({"logging.run_id": "old"})
    with pytest.raises(TypeError, match=r"OldStyle.train_step returned NoneType, not the loss.*return super\(\)"):
        OldStyle().run()


def test_console_log_runs_and_plots_number_epochs_alike(tmp_path, capsys):
    """One convention (docs/runs.md): epochs numbered from 0, as `self.epoch` counts them. The console's epoch
    lines (`epoch E/LAST`), its best epoch, log.jsonl's `epoch`, the plots' x values and `torchstrap runs`'
    best_epoch are the same numbers for the same run."""
    from torchstrap_runtime.plots import epoch_points
    from torchstrap_runtime.runs import load_runs, read_curve, runs_table

    set_values({"logging.run_id": "numbers", "training.epochs": 3, "logging.monitor": "score",
                "logging.progress": True})
    trainer = Scored()
    trainer.print_summary(trainer.run())
    printed = capsys.readouterr()
    printed = printed.out + printed.err
    log = epochs_of(trainer)
    best = max(log, key=lambda r: r["score"])
    assert [r["epoch"] for r in log] == [0, 1, 2] and best["epoch"] == 1
    shown = [int(n) for n in re.findall(r"^epoch (\d+)/2: ", printed, flags=re.M)]  # 3 epochs: the last is 2
    assert shown == [r["epoch"] for r in log] == [0, 1, 2], printed
    assert re.search(rf"^best score: 0\.5000 at epoch {best['epoch']} ", printed, flags=re.M), printed
    assert re.search(r"^epoch 2: ", printed, flags=re.M), printed  # the summary: the last epoch's number
    assert [x for x, _ in epoch_points(log, "score")] == [0, 1, 2]  # curves.png
    assert read_curve(tmp_path / "numbers", "score", "epoch")[0] == [0, 1, 2]  # torchstrap plot
    runs = load_runs([tmp_path], use_sacct=False)
    (row,) = runs_table(runs, metric="score")
    assert row["best_epoch"] == best["epoch"] == 1 and row["epochs"] == "3/3"  # 3 epochs run, of 3
