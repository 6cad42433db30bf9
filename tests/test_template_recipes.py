"""The `recipe` answer: `torchstrap new -d dataset=imagenet -d recipe=ffcv-rn50` (and ffcv-rn18, and
ffcv-cifar-resnet9 for cifar10) generates an experiment whose configs/default.yaml reads like the FFCV config
it reproduces (their keys, their values, under our sections), and a short run of each recipe trains on small
files in the real formats: the training resolution follows the ramp epoch by epoch, the lr FFCV's schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataset_files import make_cifar10, make_imagenet
from experiments import resolved_config, subprocess_env, template_repo
from torchstrap.generator.cli import main
from torchstrap.generator.template_source import CHECKOUT
from torchstrap_runtime.recipes import ffcv
from torchstrap_runtime.recipes.ffcv_lr import schedule_lr

TIMEOUT = 600
# ffcv-imagenet's rn50_88_epochs.yaml / rn18_88_epochs.yaml and FFCV's examples/cifar/default_config.yaml, as
# (our section, key): their value
RN50 = {("training", "epochs"): 88, ("data", "batch_size"): 512, ("optimizer", "lr"): 1.7,
        ("optimizer", "momentum"): 0.9, ("optimizer", "weight_decay"): 1e-4, ("optimizer", "bn_wd"): False,
        ("scheduler", "name"): "ffcv_cyclic", ("scheduler", "lr_peak_epoch"): 2, ("model", "name"): "resnet50",
        ("model", "use_blurpool"): True, ("resolution", "min_res"): 160, ("resolution", "max_res"): 192,
        ("resolution", "end_ramp"): 76, ("resolution", "start_ramp"): 65, ("validation", "resolution"): 256,
        ("validation", "lr_tta"): True, ("data", "val_batch_size"): 512, ("criterion", "params"): {"label_smoothing": 0.1}}
RN18 = {**RN50, ("data", "batch_size"): 1024, ("optimizer", "lr"): 0.5, ("optimizer", "weight_decay"): 5e-5,
        ("model", "name"): "resnet18", ("logging", "eval_every"): 88}
CIFAR = {("training", "epochs"): 24, ("data", "batch_size"): 512, ("optimizer", "lr"): 0.5,
         ("optimizer", "momentum"): 0.9, ("optimizer", "weight_decay"): 5e-4, ("scheduler", "name"): "ffcv_cifar_cyclic",
         ("scheduler", "lr_peak_epoch"): 5, ("model", "name"): "resnet9", ("validation", "lr_tta"): True,
         ("criterion", "params"): {"label_smoothing": 0.1}, ("augmentation", "translate_padding"): 2,
         ("augmentation", "cutout_size"): 4, ("augmentation", "flip_p"): 0.5}


@pytest.fixture(scope="module")
def tpl(tmp_path_factory) -> Path:
    return template_repo(tmp_path_factory.mktemp("recipes") / "tpl")


def new(tpl: Path, where: Path, dataset: str, recipe: str, capsys) -> Path:
    code = main(["new", str(where), "--template", str(tpl), "-d", f"dataset={dataset}", "-d", f"recipe={recipe}",
                 "-d", "use_slurm=false"])
    assert code == 0, capsys.readouterr()
    return where


def run(exp: Path, *argv: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *argv], cwd=exp, env=subprocess_env(exp / "src", CHECKOUT),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.parametrize("dataset, recipe, expected", [("imagenet", "ffcv-rn50", RN50), ("imagenet", "ffcv-rn18", RN18),
                                                       ("cifar10", "ffcv-cifar-resnet9", CIFAR)])
def test_recipe_config_reads_like_ffcvs(tpl, tmp_path, capsys, dataset, recipe, expected):
    exp = new(tpl, tmp_path / "exp", dataset, recipe, capsys)
    written = yaml.safe_load((exp / "configs" / "default.yaml").read_text())
    config = resolved_config(exp)
    for (section, key), value in expected.items():
        assert written[section][key] == value, (section, key)
        assert config[section][key] == value, (section, key)
    text = (exp / "configs" / "default.yaml").read_text()
    for key in ("min_res", "max_res", "end_ramp", "start_ramp", "use_blurpool", "lr_tta", "label_smoothing"):
        assert (f"{key}:" in text) == (recipe != "ffcv-cifar-resnet9" or key in ("lr_tta", "label_smoothing")), key


def test_a_recipe_for_another_dataset_is_refused(tpl, tmp_path, capsys):
    code = main(["new", str(tmp_path / "exp"), "--template", str(tpl), "-d", "dataset=cifar10", "-d",
                 "recipe=ffcv-rn50"])
    err = capsys.readouterr().err
    assert code == 2 and "recipe ffcv-rn50 trains task supervised on dataset imagenet, got task supervised and " \
                         "dataset cifar10" in err, err


def epoch_records(exp: Path, run_id: str) -> list[dict]:
    lines = [json.loads(line) for line in (exp / "runs" / run_id / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("kind") == "epoch"], [r for r in lines if r.get("kind") == "train_step"]


@pytest.mark.slow  # prepares ImageNet-layout JPEGs and trains ResNet-50/18 for 3 short epochs: about a minute each
@pytest.mark.parametrize("recipe", ["ffcv-rn50", "ffcv-rn18"])
def test_imagenet_recipe_trains_with_its_resolution_ramp_and_lr_schedule(tpl, tmp_path, capsys, recipe):
    exp = new(tpl, tmp_path / "exp", "imagenet", recipe, capsys)
    make_imagenet(tmp_path / "ilsvrc", train=4, val=2)
    run(exp, "scripts/prepare_data.py", "--path", str(tmp_path / "ilsvrc"), "--max-resolution", "96")
    ramp = ["--resolution.min_res", "32", "--resolution.max_res", "96", "--resolution.start_ramp", "0",
            "--resolution.end_ramp", "3"]
    run(exp, "-m", "my_experiment.train", "--training.epochs", "3", "--data.batch_size", "4", "--data.num_workers",
        "1", "--data.val_batch_size", "6", "--validation.resolution", "64", "--optimizer.lr", "0.1",
        "--logging.eval_every", "1", "--logging.log_every", "1", "--logging.run_id", "short", "--logging.progress",
        "false", *ramp)
    epochs, steps = epoch_records(exp, "short")
    assert [r["resolution"] for r in epochs] == [ffcv.get_resolution(e, 32, 96, 3, 0) for e in range(3)] == [32, 64, 64]
    assert all(0.0 <= r["val_top1"] <= 1.0 and r["train_loss"] > 0 for r in epochs), epochs
    assert [r["lr"] for r in steps] == [schedule_lr("ffcv_cyclic", s, 0.1, 3, 3) for s in range(1, 10)]


@pytest.mark.slow  # prepares CIFAR-10's python archive and trains the ResNet-9 for 2 short epochs
def test_cifar_recipe_trains_the_resnet9_with_its_augmentations_and_schedule(tpl, tmp_path, capsys):
    exp = new(tpl, tmp_path / "exp", "cifar10", "ffcv-cifar-resnet9", capsys)
    make_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=8)
    run(exp, "scripts/prepare_data.py", "--path", str(tmp_path / "cifar-10-python.tar.gz"))
    run(exp, "-m", "my_experiment.train", "--training.epochs", "2", "--data.batch_size", "8", "--data.num_workers",
        "1", "--data.val_batch_size", "16", "--scheduler.lr_peak_epoch", "1", "--logging.log_every", "1",
        "--logging.run_id", "short", "--logging.progress", "false")
    epochs, steps = epoch_records(exp, "short")
    assert len(epochs) == 2 and all(0.0 <= r["val_top1"] <= 1.0 and r["train_loss"] > 0 for r in epochs), epochs
    assert [r["lr"] for r in steps] == [schedule_lr("ffcv_cifar_cyclic", s, 0.5, 5, 2, 1) for s in range(1, 11)]
