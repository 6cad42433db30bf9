"""The `dataset` question: each answer generates an experiment whose `scripts/prepare_data.py` writes its kind of
data (small real files made here) and whose trainer runs one epoch on it; `torchstrap update -d dataset=...`
switches an experiment. Generated code runs in fresh processes that see this checkout (PYTHONPATH)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataset_files import make_cifar10, make_cifar100, make_image_folder, make_imagenet
from experiments import resolved_config, subprocess_env, template_repo
from torchstrap.generator.cli import main, new_experiment
from torchstrap.generator.template_repo import commit
from torchstrap.generator.template_source import CHECKOUT

TIMEOUT = 600


@pytest.fixture(scope="module")
def tpl(tmp_path_factory) -> Path:
    return template_repo(tmp_path_factory.mktemp("datasets") / "tpl")


def run(exp: Path, *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *argv], cwd=exp, env=subprocess_env(exp / "src", CHECKOUT),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def small_data(dataset: str, where: Path) -> tuple[list[str], int, list[str]]:
    """prepare_data.py's --path arguments, the number of classes and the training-run options for `dataset`."""
    if dataset == "digits":
        return [], 10, []
    if dataset == "cifar10":
        make_cifar10(where / "cifar-10-python.tar.gz", per_batch=8)
        return ["--path", str(where / "cifar-10-python.tar.gz")], 10, ["--data.batch_size", "8"]
    if dataset == "cifar100":
        make_cifar100(where / "cifar-100-python.tar.gz", n_train=64, n_val=16)
        return ["--path", str(where / "cifar-100-python.tar.gz")], 100, ["--data.batch_size", "16"]
    if dataset == "image-folder":
        make_image_folder(where / "images", per_class=8)
        return ["--path", str(where / "images"), "--val-fraction", "0.25"], 3, ["--data.batch_size", "6"]
    make_imagenet(where / "ilsvrc", train=4, val=2)
    return ["--path", str(where / "ilsvrc"), "--max-resolution", "160"], 3, ["--data.batch_size", "4"]


DATASETS = ("digits", "cifar10", "cifar100", "image-folder", "imagenet")


def prepared_experiment(tpl: Path, where: Path, dataset: str) -> tuple[Path, dict, list[str]]:
    """An experiment of the `dataset` answer with its data written by its own prepare_data.py, its config, and
    the training-run options for the small data."""
    exp = new_experiment(where / "exp", {"dataset": dataset, "use_slurm": False}, template=str(tpl))
    config = resolved_config(exp)
    expected = {"digits": ("mlp", 10, 32), "cifar10": ("resnet18", 10, 32), "cifar100": ("resnet18", 100, 32),
                "image-folder": ("resnet18", 10, 224), "imagenet": ("resnet50", 1000, 224)}[dataset]
    assert (config["model"]["name"], config["model"]["num_classes"], config["data"]["image_size"]) == expected
    assert f"--source {dataset}" in (exp / "Makefile").read_text() or dataset == "digits"

    path_args, num_classes, options = small_data(dataset, where)
    run(exp, "scripts/prepare_data.py", *path_args)  # --source comes from the answer, --folder from the default
    for split in ("train", "val"):
        assert Path(exp / config["data"][f"{split}_path"]).is_file()
    if dataset != "digits":
        assert len(json.loads((exp / "data" / dataset / "classes.json").read_text())) == num_classes
    return exp, config, options


def test_cifar10_answer_prepares_its_data(tpl, tmp_path):
    """The fast check kept in the default suite (training each answer's experiment is the slow test below)."""
    prepared_experiment(tpl, tmp_path, "cifar10")


@pytest.mark.slow  # two fresh processes (torch, FFCV, numba) per answer: about a minute each on 2 cores
@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_answer_prepares_its_data_and_trains_one_epoch(tpl, tmp_path, dataset):
    exp, config, options = prepared_experiment(tpl, tmp_path, dataset)
    run(exp, "-m", "my_experiment.train", "-C", "configs/default.yaml", "--training.epochs", "1",
        "--data.num_workers", "1", "--data.val_batch_size", "8", "--logging.folder", "runs",
        "--logging.run_id", "one", "--logging.progress", "false", *options)
    epochs = [json.loads(line) for line in (exp / "runs" / "one" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r.get("kind") == "epoch"]
    assert len(epochs) == 1 and 0.0 <= epochs[0]["val_top1"] <= 1.0 and epochs[0]["train_loss"] > 0, epochs


def test_update_switches_the_dataset(tpl, tmp_path, capsys):
    exp = new_experiment(tmp_path / "exp", {"use_slurm": False}, template=str(tpl))
    assert main(["update", str(exp), "-d", "dataset=cifar100"]) == 0, capsys.readouterr()
    answers = yaml.safe_load((exp / ".copier-answers.yml").read_text())
    assert answers["dataset"] == "cifar100" and answers["model"] == "mlp"  # the earlier model answer is kept
    config = resolved_config(exp)
    assert config["data"]["train_path"] == "data/cifar100/train.beton" and config["model"]["num_classes"] == 100
    assert config["augmentation"]["flip_p"] == 0.5 and config["augmentation"]["translate_padding"] == 4
    assert "--source cifar100" in (exp / "Makefile").read_text()
    assert "0.5071" in (exp / "src" / "my_experiment" / "data.py").read_text()
    commit(exp, "switch to cifar100")


def test_computed_values_are_not_answers(tpl, tmp_path, capsys):
    code = main(["new", str(tmp_path / "exp"), "--template", str(tpl), "-d", "num_classes=5"])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown answer key 'num_classes'; the template asks: " in err
    assert "dataset, recipe, model, use_slurm." in err and "mean_std" not in err
