"""Our Loader as a drop-in for `ffcv.loader.Loader`: each behaviour FFCV code relies on, checked
against stock FFCV where FFCV can run here, and our ops inside stock FFCV's Loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ffcv.fields import IntField
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader as FFCVLoader
from ffcv.transforms import ToTensor

from torchstrap_runtime.config import reset_config, set_values
from torchstrap_runtime.data import (Loader, OrderOption, RandomColorJitter, RandomErasing, RandomGrayscale,
                                     RandomHorizontalFlip, RandomInvert, RandomResizedCrop, RandomSolarization,
                                     RandomTranslation, RandomVerticalFlip, SimpleRGBImageDecoder, write_dataset)
from torchstrap_runtime.distributed import drop_padding
from torchstrap_runtime.trainer import Trainer

N = 17
LABELS_ONLY = {"image": None, "label": [IntDecoder()]}


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    images = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    return str(write_dataset(tmp_path_factory.mktemp("compat") / "seventeen.beton", images, np.arange(N)))


def labels(loader) -> list:
    return [batch[-1].ravel().tolist() for batch in loader]


def test_order_defaults_to_sequential_like_ffcv(beton):
    ours = Loader(beton, batch_size=5, num_workers=1, drop_last=False, pipelines=LABELS_ONLY)
    stock = FFCVLoader(beton, batch_size=5, num_workers=1, drop_last=False, pipelines=LABELS_ONLY)
    assert labels(ours) == labels(stock) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16]]
    other = Loader(beton, batch_size=5, num_workers=1, drop_last=False,
                   pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    for (a,), (_, b) in zip(ours, other):  # two loaders zipped together line up
        assert np.array_equal(a, b)


class TaggedIntField(IntField):
    """A field type FFCV does not know (stored with type id 255): readers need custom_fields."""


def test_beton_with_a_custom_field_opens(tmp_path):
    from ffcv.writer import DatasetWriter

    path = str(tmp_path / "custom.beton")
    DatasetWriter(path, {"tag": TaggedIntField()}, num_workers=1).from_indexed_dataset([(i * 3,) for i in range(6)])
    loader = Loader(path, batch_size=4, num_workers=1, drop_last=False, custom_fields={"tag": TaggedIntField},
                    pipelines={"tag": [IntDecoder()]})
    assert labels(loader) == [[0, 3, 6, 9], [12, 15]]
    with pytest.raises(ValueError, match="custom.beton"):  # without it: FFCV's own refusal, naming the file
        Loader(path, batch_size=4)


def test_quasi_random_with_seed_none_builds_and_covers_the_dataset(beton):
    seeds = set()
    for _ in range(3):  # a page-less file (labels only read) works too; FFCV's QuasiRandom refuses it
        loader = Loader(beton, batch_size=4, num_workers=1, order=OrderOption.QUASI_RANDOM, os_cache=False,
                        drop_last=False, pipelines=LABELS_ONLY)
        seeds.add(loader.seed)  # any 63-bit seed (FFCV's own overflows above 2**63 / 912300)
        assert sorted(sum(labels(loader), [])) == list(range(N))
    assert len(seeds) == 3


def test_filter_selects_like_ffcv(beton):
    def keep(label):
        return label[0] % 3 == 1

    ours = Loader(beton, batch_size=2, num_workers=1, drop_last=False, pipelines=LABELS_ONLY).filter("label", keep)
    stock = FFCVLoader(beton, batch_size=2, num_workers=1, drop_last=False, pipelines=LABELS_ONLY).filter("label", keep)
    assert labels(ours) == labels(stock) == [[1, 4], [7, 10], [13, 16]]
    subset = Loader(beton, batch_size=2, num_workers=1, drop_last=False, pipelines=LABELS_ONLY,
                    indices=[2, 4, 7, 9, 10]).filter("label", keep)
    assert labels(subset) == [[4, 7], [10]]  # dataset indices kept (FFCV would select by position)


def test_numpy_integers_for_batch_size_and_seed(beton):
    plain = Loader(beton, batch_size=4, num_workers=1, order=OrderOption.RANDOM, seed=3, pipelines=LABELS_ONLY)
    numpy = Loader(beton, batch_size=np.int64(4), num_workers=1, order=OrderOption.RANDOM, seed=np.uint32(3),
                   pipelines=LABELS_ONLY)
    assert labels(plain) == labels(numpy) and len(labels(numpy)) == N // 4


@pytest.mark.parametrize("batch_size", [4, 8])
def test_distributed_without_drop_last_pads_and_evaluation_counts_once(beton, batch_size):
    shards, counted = [], []
    for rank in range(2):
        loader = Loader(beton, batch_size=batch_size, num_workers=1, order=OrderOption.RANDOM, seed=5, rank=rank,
                        world_size=2, drop_last=False, pipelines=LABELS_ONLY)
        batches = []
        for (label,) in loader:
            batches.append(torch.as_tensor(label).ravel().numpy().copy())
            counted.extend(drop_padding(loader, batches[-1])[0].tolist())
        shards.append(batches)
        assert len(loader) == len(batches)
    assert len(shards[0]) == len(shards[1]), "every rank runs the same number of batches"
    assert [len(np.concatenate(s)) for s in shards] == [9, 9], "17 samples on 2 ranks: 9 each, like FFCV"
    assert sorted(np.concatenate(shards[0] + shards[1]).tolist()) != list(range(N))  # one sample repeated...
    assert sorted(counted) == list(range(N)), "...but counted once"


class SeventeenTrainer(Trainer):
    """Evaluates rank 1's shard of the 17-sample file (explicit rank, no process group)."""

    path = ""

    def initialize_model(self):
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 17))

    def to_device(self, batch):
        return batch[0].float(), batch[1].view(-1).long()

    def initialize_train_loader(self):
        self.train_loader = Loader(self.path, batch_size=4, num_workers=1,
                                   pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()],
                                              "label": [IntDecoder(), ToTensor()]})

    def initialize_val_loader(self):
        self.val_loader = Loader(self.path, batch_size=4, num_workers=1, rank=1, world_size=2, drop_last=False,
                                 pipelines={"image": [SimpleRGBImageDecoder(), ToTensor()],
                                            "label": [IntDecoder(), ToTensor()]})


def test_trainer_validation_sums_skip_the_padding(beton, tmp_path):
    reset_config(keep_sections=True)
    set_values({"logging.folder": str(tmp_path), "logging.progress": False, "training.epochs": 1,
                "model.num_classes": 17})
    try:
        SeventeenTrainer.path = beton
        trainer = SeventeenTrainer()
        trainer.epoch_record = {}
        trainer.evaluate()
        assert trainer.val_sums.count == 8, "rank 1 holds samples 1, 3, ..., 15 and one padding sample"
    finally:
        reset_config(keep_sections=True)


ALL_OPS = [RandomHorizontalFlip, RandomVerticalFlip, RandomTranslation, RandomColorJitter, RandomGrayscale,
           RandomSolarization, RandomInvert, RandomErasing]


@pytest.mark.slow  # compiles every op inside stock FFCV
def test_our_ops_run_inside_stock_ffcv_loader(beton):
    pipelines = {"image": [RandomResizedCrop((6, 6)), *[op() for op in ALL_OPS]], "label": [IntDecoder()]}
    images = [x.copy() for x, _ in FFCVLoader(beton, batch_size=5, num_workers=1, pipelines=pipelines)]
    assert [x.shape for x in images] == [(5, 6, 6, 3)] * 3
    flips = {"image": [SimpleRGBImageDecoder(), RandomHorizontalFlip(flip_prob=1.0)], "label": None}
    decoded = {"image": [SimpleRGBImageDecoder()], "label": None}
    plain = np.stack([x.copy() for (x,) in FFCVLoader(beton, batch_size=17, num_workers=1, pipelines=decoded)])
    flipped = np.stack([x.copy() for (x,) in FFCVLoader(beton, batch_size=17, num_workers=1, pipelines=flips)])
    assert np.array_equal(flipped, plain[:, :, :, ::-1])
    half = {"image": [SimpleRGBImageDecoder(), RandomHorizontalFlip(flip_prob=0.5, seed=1)], "label": None}
    stock = FFCVLoader(beton, batch_size=17, num_workers=1, pipelines=half)
    epochs = [next(iter(stock))[0].copy() for _ in range(4)]
    assert any(not np.array_equal(epochs[0], e) for e in epochs[1:]), "fresh draws per batch (no seeding there)"


def test_ffcv_keyword_names_are_aliases():
    assert RandomHorizontalFlip(flip_prob=0.3).p == RandomVerticalFlip(flip_prob=0.3).p == 0.3
    assert RandomGrayscale(gray_prob=0.4).p == 0.4
    assert RandomSolarization(solarization_prob=0.6, threshold=100).p == 0.6
    assert RandomColorJitter(jitter_prob=0.7).p == 0.7
    with pytest.raises(TypeError, match="flip_prob"):
        RandomHorizontalFlip(p=0.1, flip_prob=0.2)
