"""The data-bottleneck report (torchstrap_runtime.doctor): its per-op figures add up to the loader's time on the
benchmark's 256 px pipeline, its advice follows a planted bottleneck, and a run with it is the run without it."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ffcv.fields.decoders import IntDecoder
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.transforms import ToTensor, ToTorchImage

from torchstrap_runtime import doctor
from torchstrap_runtime.config import reset_config, set_values
from torchstrap_runtime.data import Loader, OrderOption, RandomHorizontalFlip, RandomResizedCrop, write_digits
from torchstrap_runtime.run_folder import DOCTOR_FILE
from torchstrap_runtime.trainer import Trainer

BENCH = Path(__file__).resolve().parent.parent / "bench"
BATCH = 32


@pytest.fixture(scope="module")
def jpeg256(tmp_path_factory) -> str:
    """The benchmark's 256 px data (224-288 px JPEGs of photographs, FFCV's writer), 320 images."""
    sys.path.insert(0, str(BENCH))
    try:
        import datasets
    finally:
        sys.path.remove(str(BENCH))
    spec = datasets.Spec("jpeg256", 320, 224, 288, folder=tmp_path_factory.mktemp("bench_data"))
    return str(datasets.ensure(spec))


class SlowOp(Operation):
    """A planted bottleneck: 3 ms of CPU per image on the (torch) batch, changing nothing."""

    def generate_code(self):
        def slow(images, dst):
            end = time.perf_counter() + 3e-3 * len(images)
            while time.perf_counter() < end:
                pass
            return images
        return slow

    def declare_state_and_memory(self, previous_state):
        return previous_state, None


def bench_loader(path: str, workers: int = 2, slow: bool = False) -> Loader:
    """The benchmark's 256 px pipeline (bench/bench_loader.py): RandomResizedCrop 224 + flip, uint8 NCHW."""
    image = [RandomResizedCrop((224, 224), seed=1), RandomHorizontalFlip(seed=2), ToTensor(), ToTorchImage()]
    if slow:
        image.append(SlowOp())
    return Loader(path, batch_size=BATCH, num_workers=workers, order=OrderOption.RANDOM, seed=0, drop_last=True,
                  pipelines={"image": image, "label": [IntDecoder(), ToTensor()]})


def test_ops_add_up_to_the_loader_time_on_the_256px_pipeline(jpeg256):
    loader = bench_loader(jpeg256)
    doctor.measure_loader(loader, batches=6)  # the file mapped and read once, as by the epoch before a report
    loader_us, ops_us, rounds = [], [], []
    for _ in range(7):  # alternated, medians: the machine's load moves both
        rate, _ = doctor.measure_loader(loader, batches=8)
        loader_us.append(1e6 / rate)
        ops = doctor.time_ops(loader, batches=8)
        ops_us.append(sum(op["us_per_image"] for op in ops))
        rounds.append(ops)
    assert [(op["pipeline"], op["op"]) for op in ops] == [
        ("image", "RandomResizedCrop"), ("image", "RandomHorizontalFlip"), ("image", "ToTensor"),
        ("image", "ToTorchImage"), ("label", "IntDecoder"), ("label", "ToTensor"), doctor.HAND_OVER]
    loader_time, ops_time = statistics.median(loader_us), statistics.median(ops_us)
    between = statistics.median(ops[-1]["us_per_image"] for ops in rounds)
    print(f"256 px: loader alone {loader_time:.0f} µs/image, sum of the rows {ops_time:.0f} µs/image "
          f"(of which between batches {between:.0f})")
    assert abs(ops_time - loader_time) <= 0.15 * loader_time
    assert max(ops, key=lambda op: op["us_per_image"])["op"] == "RandomResizedCrop"  # decoding dominates


def test_decode_ceiling_on_jpeg_and_raw(jpeg256, tmp_path):
    ceiling = doctor.decode_ceiling(bench_loader(jpeg256), images=32)
    assert ceiling["storage"] == "jpeg" and ceiling["failed"] == 0 and 224 <= ceiling["mean_side_px"] <= 288
    assert ceiling["images_per_s"] == pytest.approx(ceiling["images_per_s_one_core"] * doctor.cores())
    assert 100 < ceiling["images_per_s_one_core"] < 100_000
    paths = write_digits(tmp_path)
    raw = Loader(paths["train"], batch_size=64, pipelines={"image": [RandomResizedCrop((16, 16), seed=0)]})
    assert doctor.decode_ceiling(raw, images=32) == {"storage": "raw", "mean_side_px": 32.0}


def report_of(loader: Loader, step_images_per_s: float) -> dict:
    """The report's data-side figures of `loader`, the training step's given."""
    report = {"batch_size": loader.batch_size, "num_workers": loader.num_workers, "cores": 2, "os_cache": True,
              "step_images_per_s": step_images_per_s, "data_wait_share": None}
    report["loader_images_per_s"], _ = doctor.measure_loader(loader, batches=3)
    report["ops"] = doctor.time_ops(loader, batches=3)
    report["decode_ceiling"] = doctor.decode_ceiling(loader, images=32)
    return report


def test_advice_follows_the_planted_bottleneck(jpeg256):
    baseline = doctor.advise(report_of(bench_loader(jpeg256), step_images_per_s=1e9))
    assert not any("SlowOp" in text for text in baseline)
    assert not any("data.num_workers" in text for text in baseline)

    slow = doctor.advise(report_of(bench_loader(jpeg256, slow=True), step_images_per_s=1e9))
    assert any(text.startswith("SlowOp (image pipeline) takes") for text in slow), slow

    one_worker = doctor.advise(report_of(bench_loader(jpeg256, workers=1), step_images_per_s=1e9))
    assert any(text.startswith("data.num_workers is 1 of 2 cores") for text in one_worker), one_worker

    step_bound = doctor.advise(report_of(bench_loader(jpeg256), step_images_per_s=1.0))
    assert len(step_bound) == 1 and step_bound[0].startswith("the training step is the limit")


class DigitsTrainer(Trainer):
    paths: dict = {}

    def initialize_model(self):
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))

    def to_device(self, batch):
        return batch[0].float().div(255), batch[1].view(-1).long()

    def initialize_train_loader(self):
        pipelines = {"image": [RandomResizedCrop((16, 16), scale=(0.5, 1.0), seed=1), ToTensor(), ToTorchImage()],
                     "label": [IntDecoder(), ToTensor()]}
        self.train_loader = Loader(self.paths["train"], batch_size=128, num_workers=1, order=OrderOption.RANDOM,
                                   seed=0, pipelines=pipelines, drop_last=True)

    def initialize_val_loader(self):
        self.val_loader = []


def test_a_first_epoch_too_short_for_the_budget_is_not_measured(tmp_path, capsys):
    DigitsTrainer.paths = write_digits(tmp_path / "digits")
    reset_config(keep_sections=True)
    set_values({"logging.folder": str(tmp_path), "logging.progress": False, "training.epochs": 1,
                "logging.run_id": "short", "logging.doctor": True, "logging.eval_each_epoch": False})
    try:
        trainer = DigitsTrainer()
        assert not doctor.fits_the_budget(len(trainer.train_loader))
        trainer.run()
    finally:
        reset_config(keep_sections=True)
    assert not (tmp_path / "short" / DOCTOR_FILE).exists()
    assert "doctor: not run after this short first epoch" in capsys.readouterr().out
    assert doctor.fits_the_budget(600) and not doctor.fits_the_budget(599)   # 4 x 3 batches <= 2 % of the epoch


def test_report_after_the_first_epoch_leaves_the_run_unchanged(tmp_path, capsys, monkeypatch):
    DigitsTrainer.paths = write_digits(tmp_path / "digits")
    monkeypatch.setattr(doctor, "fits_the_budget", lambda epoch_batches: True)  # a short epoch measured anyway
    weights = {}
    for run_id, on in (("with", True), ("without", False)):
        reset_config(keep_sections=True)
        set_values({"logging.folder": str(tmp_path), "logging.progress": False, "training.epochs": 2,
                    "training.seed": 0, "logging.run_id": run_id, "logging.doctor": on,
                    "logging.eval_each_epoch": False, "optimizer.name": "adamw", "training.ema_decay": 0.9})
        trainer = DigitsTrainer()
        trainer.run()
        weights[run_id] = trainer.raw_model.state_dict()
    reset_config(keep_sections=True)
    for name, value in weights["with"].items():
        assert torch.equal(value, weights["without"][name])
    assert not (tmp_path / "without" / DOCTOR_FILE).exists()
    report = json.loads((tmp_path / "with" / DOCTOR_FILE).read_text())
    assert report["epoch"] == 0 and report["decode_ceiling"] == {"storage": "raw", "mean_side_px": 32.0}
    assert report["loader_images_per_s"] > 0 and report["step_images_per_s"] > 0
    assert [op["op"] for op in report["ops"]] == ["RandomResizedCrop", "ToTensor", "ToTorchImage", "IntDecoder",
                                                  "ToTensor", doctor.HAND_OVER[1]]
    assert any("data.num_workers is 1" in text for text in report["advice"]) or report["bottleneck"] != "data"
    assert "where the time goes" in capsys.readouterr().out


@pytest.mark.slow
def test_report_of_a_generated_experiment_on_demand(tmp_path, capsys):
    """After the first epoch of a generated experiment's run, with `--doctor` instead of training, and
    `torchstrap doctor RUN_DIR` rebuilding a run from its config.json."""
    from experiments import make_experiment

    from torchstrap.generator.cli import main

    exp = make_experiment(tmp_path, {"project_name": "doctored"})
    trained = exp.run_train("--training.epochs", "1", "--logging.run_id", "trained", timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "where the time goes" in trained.stdout
    run_dir = tmp_path / "runs" / "trained"
    after_epoch = json.loads((run_dir / DOCTOR_FILE).read_text())
    assert after_epoch["epoch"] == 0 and after_epoch["decode_ceiling"]["storage"] == "raw"

    only = exp.run_train("--doctor", "--logging.run_id", "only-doctor", timeout=900)
    assert only.returncode == 0, only.stderr[-3000:]
    measured = json.loads((tmp_path / "runs" / "only-doctor" / DOCTOR_FILE).read_text())
    assert measured["together_images_per_s"] > 0 and 0 <= measured["data_wait_share"] <= 1
    assert not (tmp_path / "runs" / "only-doctor" / "checkpoints").exists()  # nothing was trained

    assert main(["doctor", str(run_dir)]) == 0
    remeasured = json.loads((run_dir / DOCTOR_FILE).read_text())
    assert remeasured["remeasured_from"] == str(run_dir / "config.json") and remeasured["step_images_per_s"] > 0
    assert "where the time goes" in capsys.readouterr().out
    assert main(["doctor", str(tmp_path)]) == 2  # not a run folder: one sentence, exit 2
