"""The loaders every generated experiment builds from the `data` keys (torchstrap_runtime.data.experiment_loaders)
and the base Trainer's loader hooks over an experiment's data module (`Trainer.loaders`)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from fastargs.state import set_current_config
from ffcv.fields.decoders import IntDecoder
from ffcv.transforms import ToTensor

from torchstrap_runtime import config as cfg
from torchstrap_runtime import sections
from torchstrap_runtime.data import SimpleRGBImageDecoder, experiment_loaders, write_digits
from torchstrap_runtime.trainer import Trainer

MEAN, STD = np.array([0.5, 0.5, 0.5]) * 255, np.array([0.25, 0.25, 0.25]) * 255


@pytest.fixture
def digits_config(tmp_path):
    saved = cfg.get_config()
    cfg.reset_config()
    sections.declare_standard_sections()
    paths = write_digits(tmp_path)
    cfg.Section("data", "the digits").params(train_path=cfg.Param(cfg.Str(), "train", default=str(paths["train"])),
                                             val_path=cfg.Param(cfg.Str(), "val", default=str(paths["val"])))
    cfg.set_values({"data": {"batch_size": 32, "val_batch_size": 50, "num_workers": 1}, "training": {"device": "cpu"}})
    yield paths
    set_current_config(saved)


def pipelines() -> dict:
    return {"image": [SimpleRGBImageDecoder(), *experiment_loaders.model_input(MEAN, STD)],
            "label": [IntDecoder(), ToTensor()]}


def test_model_input_on_the_cpu_normalises_to_float32_nchw(digits_config):
    images, _ = next(iter(experiment_loaders.val_loader(pipelines())))
    assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32)
    assert images.min() >= (0 - 127.5) / 63.75 - 1e-5 and images.max() <= (255 - 127.5) / 63.75 + 1e-5


def test_train_loader_is_seeded_and_drops_the_last_partial_batch(digits_config):
    first = [labels.clone() for _, labels in experiment_loaders.train_loader(pipelines())]
    again = [labels.clone() for _, labels in experiment_loaders.train_loader(pipelines())]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)
    assert all(len(labels) == 32 for labels in first)
    cfg.set_values({"data": {"loader_seed": 1}})
    other = [labels.clone() for _, labels in experiment_loaders.train_loader(pipelines())]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_knn_val_loader_holds_the_validation_set_and_the_training_set_in_order(digits_config):
    loader = experiment_loaders.knn_val_loader(pipelines)
    val = torch.cat([labels for _, labels in loader]).reshape(-1)
    bank = torch.cat([labels for _, labels in loader.bank]).reshape(-1)
    train = torch.cat([labels for _, labels in experiment_loaders.val_loader(
        pipelines(), val_path=str(digits_config["train"]))]).reshape(-1)
    assert torch.equal(bank, train) and len(bank) > len(val) > 0


def test_trainer_loader_hooks_call_the_experiments_data_module():
    calls = []
    data = types.SimpleNamespace(train_loader=lambda distributed: calls.append(("train", distributed)) or [1],
                                 val_loader=lambda distributed: calls.append(("val", distributed)) or [2])
    trainer = Trainer.__new__(type("Mine", (Trainer,), {"loaders": data}))
    trainer.world_size = 1
    trainer.initialize_train_loader()
    trainer.initialize_val_loader()
    assert calls == [("train", False), ("val", False)] and (trainer.train_loader, trainer.val_loader) == ([1], [2])
    bare = Trainer.__new__(Trainer)
    with pytest.raises(NotImplementedError, match="Trainer.loaders"):
        bare.initialize_train_loader()
