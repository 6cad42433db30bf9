"""The Trainer on real FFCV loaders: a run whose seeds are None still resumes exactly (the drawn seeds
travel in the checkpoint), and config.json records the seeds that were drawn."""

from __future__ import annotations

import json

import pytest
import torch
from ffcv.fields.decoders import IntDecoder
from ffcv.transforms import ToTensor, ToTorchImage

from torchstrap_runtime.config import reset_config, set_values
from torchstrap_runtime.data import Loader, OrderOption, RandomResizedCrop, RandomTranslation, SimpleRGBImageDecoder, write_digits
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.trainer import MEASURED_KEYS, Trainer

SEEDS: dict = {"order": None, "crop": None, "translate": None}


class DigitsTrainer(Trainer):
    def initialize_model(self):
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))

    def to_device(self, batch):
        return batch[0].float().div(255), batch[1].view(-1).long()

    def initialize_train_loader(self):
        pipelines = {"image": [RandomResizedCrop((16, 16), scale=(0.5, 1.0), seed=SEEDS["crop"]),
                               RandomTranslation(padding=2, seed=SEEDS["translate"]), ToTensor(), ToTorchImage()],
                     "label": [IntDecoder(), ToTensor()]}
        self.train_loader = Loader(self.paths["train"], batch_size=128, num_workers=1, order=OrderOption.RANDOM,
                                   seed=SEEDS["order"],
                                   pipelines=pipelines, drop_last=True)

    def initialize_val_loader(self):
        pipelines = {"image": [RandomResizedCrop((16, 16), scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0), ToTensor(),
                               ToTorchImage()], "label": [IntDecoder(), ToTensor()]}
        self.val_loader = Loader(self.paths["val"], batch_size=256, num_workers=1, order=OrderOption.SEQUENTIAL,
                                 pipelines=pipelines, drop_last=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    DigitsTrainer.paths = write_digits(tmp_path_factory.mktemp("digits"))
    return DigitsTrainer.paths


@pytest.fixture(autouse=True)
def config(tmp_path):
    reset_config(keep_sections=True)
    set_values({"logging.folder": str(tmp_path), "logging.progress": False, "training.epochs": 2,
                "logging.log_every": 1, "training.seed": 0})
    SEEDS.update(order=None, crop=None, translate=None)
    yield
    reset_config(keep_sections=True)


def test_none_seeds_resume_exactly_and_are_recorded(digits, tmp_path):
    class StopsAtStep13(DigitsTrainer):
        def after_train_step(self):
            super().after_train_step()
            if self.step == 13:
                self.request_stop()

    set_values({"logging.run_id": "interrupted"})
    StopsAtStep13().run()  # seeds None: drawn fresh for this run
    resumed = DigitsTrainer()  # builds its loader with other fresh seeds, then adopts the checkpoint's
    resumed.run()

    drawn = json.loads((tmp_path / "interrupted" / "config.json").read_text())["seeds"]["train_loader_resolved"]
    assert drawn["order"] is not None and [op for op, _ in drawn["augmentations"]["image"]] == \
        ["RandomResizedCrop", "RandomTranslation"]
    (_, crop), (_, translate) = drawn["augmentations"]["image"]
    SEEDS.update(order=drawn["order"], crop=crop, translate=translate)
    set_values({"logging.run_id": "replayed"})
    replayed = DigitsTrainer()  # the drawn seeds given explicitly, no interruption
    replayed.run()
    for a, b in zip(resumed.model.state_dict().values(), replayed.model.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda run: [{k: v for k, v in r.items() if k not in MEASURED_KEYS} for r in read_log(tmp_path / run)]
    assert strip("interrupted") == strip("replayed")
