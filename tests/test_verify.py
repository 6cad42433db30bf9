"""`torchstrap verify` on a generated experiment: every property holds on a run of the digits, and a planted
nondeterminism makes the matching property fail with its step and sample named: an augmentation drawing from
numba's unseeded generator (same settings, worker counts), a loader whose order depends on its worker count.
Also the steps record itself (steps.jsonl of every run, cut back on resume) and the comparisons on records."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from experiments import Experiment, make_experiment
from torchstrap_runtime.config import reset_config, set_values
from torchstrap_runtime.run_folder import steps_file
from torchstrap_runtime.steps_record import data_hash, read_steps, sample_hashes
from torchstrap_runtime.trainer import Trainer
from torchstrap_runtime.verify import Finding, sample_difference

TRAIN = ("--training.epochs", "1", "--training.limit_train_batches", "6", "--training.limit_val_batches", "1",
         "--data.num_workers", "2")

# planted in a copy of the experiment's data.py, chosen by the PLANTED variable of the runs' environment
PLANTED = '''

import os

from numba import njit


@njit
def unseeded_flip_kernel(images, dst, indices, key, params):
    """Flip with numba's global generator: seeded from the OS at each process start, not by the op's seed."""
    for i in range(images.shape[0]):
        dst[i] = images[i, :, ::-1] if np.random.random() < 0.5 else images[i]
    return dst


class UnseededFlip(RandomHorizontalFlip):
    kernel = staticmethod(unseeded_flip_kernel)


class WorkerOrderLoader(Loader):
    """A loader whose order shifts with its worker count."""

    def epoch_order(self, epoch):
        return np.roll(super().epoch_order(epoch), self.num_workers)


if os.environ.get("PLANTED") == "unseeded augmentation":
    RandomHorizontalFlip = UnseededFlip
if os.environ.get("PLANTED") == "order by workers":
    experiment_loaders.Loader = WorkerOrderLoader  # data.py's loaders are built by the runtime's experiment_loaders
'''


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Experiment:
    exp = make_experiment(tmp_path_factory.mktemp("verify"), {"use_slurm": False})
    data = next(exp.path.glob("src/*/data.py"))
    text = data.read_text()
    marker = "# --- add your own pipelines and loaders below this line ---"
    # the planted names replace the imported ones before the functions below the marker are called
    data.write_text(text.replace(marker, PLANTED + "\n" + marker))
    return exp


def run_verify(experiment: Experiment, run_id: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return experiment.run("-m", "torchstrap.generator.cli", "verify", str(experiment.root / "runs" / run_id), *args,
                          env=env, timeout=1200)


def train(experiment: Experiment, run_id: str, *args: str, env: dict | None = None) -> None:
    done = experiment.run_train(*TRAIN, "--logging.run_id", run_id, *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def properties(experiment: Experiment, run_id: str) -> dict[str, dict]:
    result = json.loads((experiment.root / "runs" / run_id / "verify.json").read_text())
    return {p["name"]: p for p in result["properties"]}


@pytest.fixture(scope="module")
def plain_run(experiment) -> str:
    """A run of the experiment as generated: 6 steps."""
    train(experiment, "plain")
    return "plain"


def test_every_property_holds_on_a_generated_experiment(experiment, plain_run):
    done = run_verify(experiment, plain_run, "--steps", "3", "--workers", "1", "--batch-sizes", "32", "--kill",
                      "--seed", "0")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    found = properties(experiment, plain_run)
    assert set(found) == {"same settings", "workers 1", "batch size 32", "killed after step 2 and resumed"}
    assert all(p["holds"] for p in found.values()), found
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("4/4 properties hold over 3 steps"), done.stdout
    assert "same settings" in lines[0] and "holds: 3 steps: batches, losses bitwise equal" in lines[0]
    assert "verify [4/4] killed and resumed:" in done.stderr  # a line per re-run
    assert not (experiment.root / "runs" / plain_run / "verify" / "same_settings" / "checkpoints").exists()


@pytest.mark.slow  # torchrun starts three processes besides the same-settings re-run (minutes on a loaded machine)
def test_two_processes_hold_on_a_generated_experiment(experiment, plain_run):
    done = run_verify(experiment, plain_run, "--steps", "3", "--workers", "", "--batch-sizes", "", "--nproc", "2")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    found = properties(experiment, plain_run)
    assert set(found) == {"same settings", "2 processes"} and all(p["holds"] for p in found.values()), found
    assert "2 processes" in done.stdout and "the ranks' samples together are the single process's" in done.stdout


def verify_planted(experiment: Experiment, planted: str, run_id: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Train with a planted nondeterminism (env PLANTED), verify 2 steps with 1 worker: it must fail (exit 1);
    the run's properties as verify.json records them."""
    env = {"PLANTED": planted}
    train(experiment, run_id, env=env)
    done = run_verify(experiment, run_id, "--steps", "2", "--workers", "1", "--batch-sizes", "", env=env)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    return done, properties(experiment, run_id)


def test_an_unseeded_augmentation_fails_same_settings_and_workers(experiment):
    done, found = verify_planted(experiment, "unseeded augmentation", "unseeded")
    same, workers = found["same settings"], found["workers 1"]
    assert not same["holds"] and same["step"] == 0 and same["sample"] is not None, same
    assert same["detail"].startswith("differs at step 0: batch data (sample ")
    assert not workers["holds"] and workers["step"] == 0, workers
    assert workers["detail"] == f"differs at step 0: sample {workers['sample']}'s augmented pixels"
    assert "0/2 properties hold" in done.stdout and "NOT reproducible" in done.stdout


def test_an_order_that_depends_on_the_worker_count_fails_workers(experiment):
    _, found = verify_planted(experiment, "order by workers", "worker-order")
    assert found["same settings"]["holds"], found  # two workers again: the same order
    workers = found["workers 1"]
    assert not workers["holds"] and workers["step"] == 0, workers
    assert workers["detail"].startswith("differs at step 0: order, sample ")
    assert f"where the same-settings re-run has sample {workers['sample']}" in workers["detail"]


def test_a_run_without_steps_record_is_refused_in_one_sentence(experiment, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"config": {"data": {}, "training": {}},
                                                      "trainer": {"class": "x.Trainer"}}))
    done = experiment.run("-m", "torchstrap.generator.cli", "verify", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"torchstrap verify: {tmp_path} has no steps.jsonl: the run recorded no steps (a training.fast_dev_run, or a run from "
        f"before the steps record)"]


# ---------------------------------------------------------------------- the record and the comparisons
class TinyTrainer(Trainer):
    """A real Trainer on 48 random samples in batches of 8 and a linear model."""

    def initialize_model(self) -> None:
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))

    def initialize_train_loader(self) -> None:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(48, 3, 2, 2, generator=g), torch.randint(0, 2, (48,), generator=g)
        self.train_loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)]

    def initialize_val_loader(self) -> None:
        self.val_loader = [(torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))]


def tiny_run(folder, run_id: str, trainer: type = TinyTrainer, **values) -> dict:
    reset_config(keep_sections=True)
    set_values({"logging.folder": str(folder), "logging.progress": False, "model.num_classes": 2,
                "training.epochs": 2, "logging.run_id": run_id, "scheduler.name": "none", **values})
    try:
        return trainer().run()
    finally:
        reset_config(keep_sections=True)


def test_every_run_records_its_steps_and_a_resumed_run_reads_like_an_uninterrupted_one(tmp_path):
    tiny_run(tmp_path, "whole")
    steps, epochs = read_steps(steps_file(tmp_path / "whole"))
    assert sorted(steps) == list(range(12)) and sorted(epochs) == [0, 1]
    assert steps[7]["epoch"] == 1 and steps[7]["batch"] == 1 and isinstance(steps[7]["loss"], float)

    tiny_run(tmp_path, "cut", **{"training.epochs": 1})  # one epoch, then resumed for the second
    with open(steps_file(tmp_path / "cut"), "a") as f:  # lines a crash left after the checkpoint
        f.write(json.dumps({"step": 6, "epoch": 1, "batch": 0, "data": "x", "loss": 0.0}) + "\n")
        f.write(json.dumps({"epoch_end": 1, "step": 12, "weights": "x"}) + "\n")
    tiny_run(tmp_path, "cut")
    assert (steps_file(tmp_path / "cut")).read_text() == steps_file(tmp_path / "whole").read_text()


def test_hashes_see_every_byte_and_name_each_sample():
    images = torch.zeros(4, 3, 2, 2)
    labels = torch.arange(4)
    before, rows = data_hash((images, labels)), sample_hashes((images, labels))
    images[2, 1, 0, 1] = 1e-30
    assert data_hash((images, labels)) != before
    changed = sample_hashes((images, labels))
    assert [a == b for a, b in zip(rows, changed)] == [True, True, False, True]
    assert len(set(rows)) == 4  # the labels tell the zero images apart


def test_sample_difference_names_the_first_order_or_pixel_difference():
    reference = [(5, "a", 0), (9, "b", 0), (2, "c", 1)]
    assert sample_difference(reference, list(reference), "w") is None
    assert sample_difference(reference, [(5, "a", 0), (9, "b", 0), (2, "X", 1)], "w") == Finding(
        "w", False, "differs at step 1: sample 2's augmented pixels", 1, 2)
    assert sample_difference(reference, [(5, "a", 0), (2, "c", 0), (9, "b", 1)], "w") == Finding(
        "w", False, "differs at step 0: order, sample 2 where the same-settings re-run has sample 9", 0, 9)


# ---------------------------------------------------------------------- training.deterministic
class NondeterministicOpTrainer(TinyTrainer):
    """Its step calls an op with no deterministic kernel on the CPU (put_ with accumulate and repeated indices)."""

    def train_step(self) -> torch.Tensor:
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
        return super().train_step()


def test_deterministic_turns_on_torchs_flags_and_a_refusing_op_is_named_in_one_sentence(tmp_path, capsys):
    from torchstrap_runtime.errors import exit_on_user_error

    def main(argv: list[str]) -> None:
        tiny_run(tmp_path, "deterministic", NondeterministicOpTrainer, **{"training.deterministic": True})

    try:
        tiny_run(tmp_path, "flags", **{"training.deterministic": True, "training.epochs": 1})
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        with pytest.raises(SystemExit) as stopped:
            exit_on_user_error(main, [])
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: training.deterministic is true but put_ has no deterministic implementation on "
        "this device: set training.deterministic false (steps are then not bitwise reproducible) or replace the op "
        "that calls it"]
