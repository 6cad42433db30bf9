"""Faults and hostile input a user can cause, tried in a generated experiment as a user runs it: a training
set smaller than a batch, a run id that escapes its folder, a wrong device, a dataset that does not fit the
model, a changed config on resume, a YAML key given twice, a Python keyword as package name, Python 3 CIFAR
pickles, an empty class folder, a garbage config.json. Each ends in one sentence and exit code 2 (or works).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from experiments import Experiment, make_experiment
from torchstrap_runtime.config import reset_config, set_values
from torchstrap_runtime.data import write_digits
from torchstrap_runtime.errors import UserError
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.run_folder import check_run_id
from torchstrap_runtime.trainer import Trainer

FAST = ("--training.limit_train_batches", "3", "--training.limit_val_batches", "1", "--logging.log_every", "1")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    return make_experiment(tmp_path_factory.mktemp("faults"), {"use_slurm": False})


def train(experiment: Experiment, *args: str) -> subprocess.CompletedProcess:
    """The experiment's train module on the digits, one epoch of at most 3 batches, with `args`."""
    return experiment.run_train("--training.epochs", "1", *FAST, *args)


def assert_one_sentence(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------- training that does nothing
def test_batch_larger_than_the_training_set_is_refused_before_training(experiment):
    result = experiment.run_train("--training.epochs", "1", "--data.batch_size", "5000", "--logging.run_id", "empty")
    assert_one_sentence(result, f"the training set {experiment.train} has 1437 samples, fewer than "
                                f"data.batch_size 5000", "set data.batch_size to at most 1437")
    assert not (experiment.root / "runs" / "empty").exists()


class NoBatchTrainer(Trainer):
    """A real Trainer whose training loader has no length and yields nothing."""

    def initialize_model(self) -> None:
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))

    def initialize_train_loader(self) -> None:
        self.train_loader = (batch for batch in [])

    def initialize_val_loader(self) -> None:
        self.val_loader = [(torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))]


@contextlib.contextmanager
def in_process_run(folder: Path, run_id: str, epochs: int) -> Iterator[None]:
    """The config of a Trainer built in this process: `run_id` under `folder`, no progress bar, two classes."""
    reset_config(keep_sections=True)
    set_values({"logging.folder": str(folder), "logging.progress": False, "model.num_classes": 2,
                "training.epochs": epochs, "logging.run_id": run_id})
    try:
        yield
    finally:
        reset_config(keep_sections=True)


def test_a_run_without_any_step_is_never_finished(tmp_path):
    with in_process_run(tmp_path, "nothing", epochs=2):
        trainer = NoBatchTrainer()
        with pytest.raises(UserError, match="the training loader gave no batch in epoch 0: nothing was trained"):
            trainer.run()
        assert not trainer.finished
        assert all(r.get("status") != "finished" for r in read_log(tmp_path / "nothing"))


# ---------------------------------------------------------------------- a run id that escapes
@pytest.mark.parametrize("run_id", ["../../escape", "/tmp/absolute-run"])
def test_run_id_that_leaves_the_runs_folder_is_refused(experiment, run_id):
    result = train(experiment, "--logging.run_id", run_id)
    assert_one_sentence(result, f"logging.run_id {run_id!r} is refused: a run id is a folder name: no '/' or '\\', "
                                f"not '.' or '..', not absolute, no control characters")
    assert not (experiment.root / "runs" / run_id).resolve().exists()


@pytest.mark.parametrize("run_id", ["..", ".", "a\\b", "tab\there", "new\nline", " "])
def test_run_id_rule(run_id):
    with pytest.raises(UserError, match="is refused: a run id is a folder name"):
        check_run_id(run_id)
    assert check_run_id("2026-01-01_lr0.1 baseline") == "2026-01-01_lr0.1 baseline"


# ---------------------------------------------------------------------- a wrong device
@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA GPU")
def test_cuda_without_a_gpu(experiment):
    assert_one_sentence(train(experiment, "--training.device", "cuda"),
                        "training.device is 'cuda' but this machine has no CUDA GPU that torch can use; "
                        "use 'auto' or 'cpu'")


@pytest.mark.parametrize("device, sentence", [
    ("gpu", "training.device 'gpu' is not a device: expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'"),
    ("xla", "training.device 'xla' is not a device this machine trains on"),
])
def test_unknown_device(experiment, device, sentence):
    assert_one_sentence(train(experiment, "--training.device", device), sentence)


def test_device_index_beyond_the_gpus(experiment):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expected = f"this machine has {count} GPU" if count else "this machine has no CUDA GPU"
    assert_one_sentence(train(experiment, "--training.device", f"cuda:{count + 7}"),
                        f"training.device is 'cuda:{count + 7}' but {expected}")


def test_float16_on_the_cpu(experiment):
    assert_one_sentence(train(experiment, "--training.device", "cpu", "--training.dtype", "float16"),
                        "training.dtype float16 needs a CUDA GPU (loss scaling runs only there) but training runs "
                        "on cpu; use bfloat16 or float32")


# ---------------------------------------------------------------------- a dataset that does not fit the model
def test_images_of_another_size_are_refused_when_the_loaders_are_built(experiment, tmp_path):
    small = write_digits(tmp_path / "digits16", image_size=16)
    result = train(experiment, "--data.train_path", str(small["train"]), "--data.val_path", str(small["val"]),
                   "--logging.run_id", "small")
    # the training pipeline crops and resizes to data.image_size: only validation decodes the stored size
    assert_one_sentence(result, f"{small['val']} stores 16x16 px images (field 'image'), which the pipeline uses "
                                f"at their stored size, but data.image_size is 32")
    assert not (experiment.root / "runs" / "small").exists()


def test_labels_beyond_num_classes_are_refused(experiment):
    result = train(experiment, "--model.num_classes", "2", "--logging.run_id", "two")
    assert_one_sentence(result, f"{experiment.train} stores labels from 0 to 9 (field 'label') but "
                                f"model.num_classes is 2 (labels 0 to 1): set model.num_classes to at least 10")


# ---------------------------------------------------------------------- a changed config on resume
@pytest.mark.slow  # four short trainings
def test_resume_with_a_changed_config(experiment):
    first = train(experiment, "--logging.run_id", "resumed")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = experiment.root / "runs" / "resumed"
    before = (run_dir / "config.json").read_text()

    refused = train(experiment, "--logging.run_id", "resumed", "--optimizer.lr", "0.05", "--training.epochs", "2")
    sentence = assert_one_sentence(refused, f"run {run_dir} resumes with values that differ from its config.json: "
                                            f"optimizer.lr (0.1 -> 0.05)", "training.resume_changed true")
    assert "training.epochs" not in sentence  # may change
    assert (run_dir / "config.json").read_text() == before

    longer = experiment.run_train("--training.epochs", "2", *FAST, "--logging.run_id", "resumed")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming with changed values: training.epochs 1 -> 2" in longer.stderr
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["training"]["epochs"] == 2
    assert record["resumed_with_changes"][0]["changed"] == {"training.epochs": [1, 2]}
    assert [r["changed"] for r in read_log(run_dir) if r["kind"] == "config_change"] == [{"training.epochs": [1, 2]}]

    allowed = experiment.run_train("--training.epochs", "3", *FAST, "--logging.run_id", "resumed",
                                   "--optimizer.lr", "0.05", "--training.resume_changed", "true")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["optimizer"]["lr"] == 0.05
    assert record["resumed_with_changes"][1]["changed"] == {
        "optimizer.lr": [0.1, 0.05], "training.epochs": [2, 3], "training.resume_changed": [False, True]}
    epochs = [r["epoch"] for r in read_log(run_dir) if r["kind"] == "epoch"]
    assert epochs == [0, 1, 2]


class TinyTrainer(Trainer):
    """A real Trainer on 32 random samples in batches of 8 and a linear model."""

    def initialize_model(self) -> None:
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))

    def initialize_train_loader(self) -> None:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 3, 2, 2, generator=g), torch.randint(0, 2, (32,), generator=g)
        self.train_loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]

    def initialize_val_loader(self) -> None:
        self.val_loader = [(torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))]


def test_refused_resume_releases_the_run_and_evaluation_keeps_the_record(tmp_path):
    with in_process_run(tmp_path, "kept", epochs=1):
        TinyTrainer().run()
        record = (tmp_path / "kept" / "config.json").read_text()
        set_values({"optimizer.lr": 0.01, "optimizer.momentum": 0.5})
        with pytest.raises(UserError, match=r"differ from its config.json: optimizer.lr \(0.1 -> 0.01\), "
                                            r"optimizer.momentum \(0.9 -> 0.5\); rerun with the recorded values"):
            TinyTrainer()
        assert not (tmp_path / "kept" / "run.lock").exists()
        set_values({"optimizer.lr": 0.1, "optimizer.momentum": 0.9, "training.eval_only": True})
        TinyTrainer().run()  # evaluating the run: allowed, and its config.json stays as it trained
        assert (tmp_path / "kept" / "config.json").read_text() == record


# ---------------------------------------------------------------------- smaller ones
def test_yaml_key_given_twice(experiment, tmp_path):
    config = tmp_path / "twice.yaml"
    config.write_text("training:\n  epochs: 1\n  epochs: 5\n")
    assert_one_sentence(train(experiment, "-C", str(config)), f"config file '{config}' could not be parsed: key "
                                                              f"'epochs' is given twice, at lines 2 and 3 (keep one)")


def test_python_keyword_as_package_name(experiment, tmp_path, capsys):
    from torchstrap.generator.cli import main

    code = main(["new", str(tmp_path / "exp"), "--template", str(experiment.root / "tpl"), "-d", "package_name=class"])
    err = capsys.readouterr().err
    assert code == 2 and "package_name 'class' is a Python keyword" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "exp").exists()


def test_cifar_pickles_written_by_python_3_load():
    from torchstrap_runtime.data.sources import SourceError, load_pickle

    batch = {"batch_label": "training batch 1 of 5", "data": np.arange(12, dtype=np.uint8).reshape(1, 12),
             "labels": [3], "filenames": [b"cat_01.png"]}
    loaded = load_pickle(pickle.dumps(batch, protocol=2), "data_batch_1")
    assert loaded["filenames"] == [b"cat_01.png"] and loaded["labels"] == [3]
    assert np.array_equal(loaded["data"], batch["data"])

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))
    with pytest.raises(SourceError, match="refused global __builtin__.print"):
        load_pickle(pickle.dumps({"data": Evil()}, protocol=2), "evil")
    with pytest.raises(SourceError, match="refused global _codecs.decode"):  # only encode, nothing else of _codecs
        load_pickle(b"\x80\x02c_codecs\ndecode\nq\x00.", "decode")


def test_empty_class_folder(tmp_path):
    from torchstrap_runtime.data.sources import SourceError, folder_splits

    import cv2
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(tmp_path / "pets" / "cat" / f"{i}.png"), np.full((8, 8, 3), i * 40, np.uint8))
    with pytest.raises(SourceError, match=f"the class folder {tmp_path / 'pets' / 'dog'} holds no image"):
        folder_splits(tmp_path / "pets", "image-folder", 0.25, 0, 0)


def test_garbage_config_json_warns_in_runs(tmp_path, capsys):
    from torchstrap.generator.cli import main

    run_dir = tmp_path / "runs" / "garbage"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{not json")
    (run_dir / "log.jsonl").write_text("")
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr()
    assert "garbage" in out.out
    warnings = [line for line in out.err.splitlines() if "warning" in line]
    assert warnings == [f"warning: {run_dir / 'config.json'} cannot be read (JSONDecodeError), its run shows no "
                        f"config values"], out.err
