"""The generated experiments' trainers of the embedding tasks (their trainer.py, imported from a freshly
generated experiment): metric learning and multi-view SSL on digits.

The figures that matter run on a real digits .beton with the seeded FFCV loaders:
- SSL (CoKe, 2 views, resnet-small) must beat the same encoder at initialisation (random) in kNN accuracy;
- metric learning (triplet loss + miner) must lift precision@1 well above the random encoder's.
Fast checks (wiring, errors, CoKe state through a resume) use in-memory batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchstrap_runtime.config import Int, Param, Section, reset_config, set_values
from torchstrap_runtime.errors import UserError
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.evaluation import KNNValLoader
from torchstrap_runtime.methods.coke import CoKeHeads
from torchstrap_runtime.models import MLP, EmbeddingNet, ResNetSmall
from torchstrap_runtime.sections import declare_standard_sections

TRIPLET = {"criterion.name": "TripletMarginLoss", "criterion.params": {"margin": 0.1},
           "criterion.miner": "TripletMarginMiner", "criterion.miner_params": {"margin": 0.1, "type_of_triplets": "semihard"}}
COKE = {"criterion.name": "coke_multi_view",
        "criterion.params": {"embedding_size": 64, "num_clusters": [10, 20], "num_samples": 128},
        "optimizer.name": "adamw", "optimizer.lr": 0.002, "optimizer.weight_decay": 0.0001}


@pytest.fixture(autouse=True)
def config(tmp_path):
    reset_config(keep_sections=True)
    declare_standard_sections()
    Section("evaluation", "kNN evaluation (the template's config.py declares it)").params(
        knn_k=Param(Int(), "neighbours voting", default=20))
    set_values({"logging.folder": str(tmp_path), "logging.progress": False, "logging.log_every": 0})
    yield
    reset_config(keep_sections=True)


# ---------------------------------------------------------------------------------------- in-memory data
def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n 3x8x8 images in 4 classes: a class-specific pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    labels = torch.arange(n) % 4
    return patterns[labels] + 0.5 * torch.randn(n, 3, 8, 8, generator=g), labels


def batches(x: torch.Tensor, y: torch.Tensor, size: int, views: int = 1) -> list[tuple]:
    """(image, label[, view2, ...]) batches; extra views are noisy copies (as a multi-view loader yields)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(0, len(x), size):
        xb = x[i:i + size]
        out.append((xb, y[i:i + size], *[xb + 0.1 * torch.randn(xb.shape, generator=g) for _ in range(views - 1)]))
    return out


def in_memory(base: type, views: int = 1) -> type:
    ssl = views > 1

    class Tiny(base):
        def initialize_model(self) -> None:
            backbone = MLP(192, hidden=(32,), num_classes=0)
            self.model = CoKeHeads(backbone, 32, dim=64, hidden_dim=32) if ssl else EmbeddingNet(backbone, 64)

        def initialize_train_loader(self) -> None:
            self.train_loader = batches(*blobs(128, 0), 32, views)

        def initialize_val_loader(self) -> None:
            self.val_loader = KNNValLoader(batches(*blobs(64, 1), 32), bank=batches(*blobs(128, 0), 64))
    return Tiny


# ---------------------------------------------------------------------------------------- fast checks
def test_embedding_net_outputs_unit_vectors_and_keeps_its_backbone():
    for backbone, x in ((MLP(192, hidden=(32,), num_classes=0), torch.randn(5, 3, 8, 8)),
                        (ResNetSmall(num_classes=0), torch.randn(5, 3, 32, 32))):
        net = EmbeddingNet(backbone, embedding_dim=16, hidden=8).eval()
        z = net(x)
        assert z.shape == (5, 16)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
        assert net.backbone(x).shape == (5, backbone.out_features)
    with pytest.raises(ValueError, match="out_features"):
        EmbeddingNet(nn.ReLU(), 16)
    with pytest.raises(ValueError, match="embedding_dim"):
        EmbeddingNet(MLP(12, num_classes=0), 0)


def test_metric_learning_trains_and_logs_its_metrics(tmp_path, task_trainer):
    set_values({**TRIPLET, "training.epochs": 2, "logging.run_id": "ml", "optimizer.lr": 0.05})
    record = in_memory(task_trainer("metric-learning"))().run()
    assert record["val_top1"] == record["val_knn_top1"] > 0.9, record  # 4 well-separated classes
    assert record["val_precision_at_1"] > 0.9 and record["val_loss"] >= 0
    epochs = [r for r in read_log(tmp_path / "ml") if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1] and all("val_precision_at_1" in r for r in epochs)


def test_ssl_trainer_calls_the_criterion_on_views_and_resumes_coke_state(tmp_path, task_trainer):
    set_values({**COKE, "criterion.params": {**COKE["criterion.params"], "num_clusters": [4]},
                "training.epochs": 1, "logging.run_id": "ssl"})
    trainer = in_memory(task_trainer("ssl-multiview"), views=3)()
    record = trainer.run()
    assert 0 <= record["val_knn_top1"] <= 1 and record["val_top1"] == record["val_knn_top1"]
    assert 1.0 <= record["val_rankme"] <= trainer.raw_model.backbone(torch.zeros(2, 3, 8, 8)).shape[1]  # effective rank
    assert "coke/head0/dual_mean" in record  # the criterion's end_epoch() ran and was logged
    centers = trainer.criterion.centers_0.clone()
    assert bool(trainer.criterion.initialized) and torch.allclose(centers.norm(dim=1), torch.ones(4))

    set_values({"training.epochs": 2})  # same run_id: resumes from checkpoints/last.pt
    resumed = in_memory(task_trainer("ssl-multiview"), views=3)()
    assert resumed.epoch == 1 and torch.equal(resumed.criterion.centers_0, centers)
    assert torch.equal(resumed.criterion.duals_0, trainer.criterion.duals_0)


def test_wrong_criterion_for_the_task_is_a_clear_error(task_trainer):
    set_values({"criterion.name": "CrossEntropyLoss"})
    with pytest.raises(UserError, match="criterion.name 'CrossEntropyLoss'.*embeddings_labels"):
        in_memory(task_trainer("metric-learning"))()
    set_values(TRIPLET)
    with pytest.raises(UserError, match="criterion.name 'TripletMarginLoss'.*views"):
        in_memory(task_trainer("ssl-multiview"), views=2)()
    set_values({**COKE, "criterion.miner": "", "criterion.miner_params": {},
                "criterion.params": {"embedding_size": 32, "num_clusters": 4, "num_samples": 128}})
    with pytest.raises(UserError, match="embedding_size is 32.*64.*model.embedding_dim"):
        in_memory(task_trainer("ssl-multiview"), views=2)()


def test_ssl_needs_a_bank(task_trainer):
    set_values({**COKE, "training.epochs": 1})
    class NoBank(in_memory(task_trainer("ssl-multiview"), views=2)):
        def initialize_val_loader(self) -> None:
            self.val_loader = batches(*blobs(64, 1), 32)
    with pytest.raises(AttributeError, match="bank"):
        NoBank().run()


# ---------------------------------------------------------------------------------------- digits .beton
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    from torchstrap_runtime.data import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"))


def digits_trainer(base: type, paths: dict, model: str, views: int = 1) -> type:
    """The generated experiments' data wiring, written out: seeded crops + shifts per view, plain kNN bank."""
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import Convert, NormalizeImage, ToTensor, ToTorchImage

    from torchstrap_runtime.data import (Loader, OrderOption, RandomResizedCrop, RandomTranslation,
                                         SimpleRGBImageDecoder)

    mean = np.array([0.5, 0.5, 0.5]) * 255

    def to_input() -> list:
        return [NormalizeImage(mean, mean, np.float32), ToTensor(), ToTorchImage(), Convert(torch.float32)]

    def view(seed: int, scale: float) -> list:
        return [RandomResizedCrop((32, 32), scale=(scale, 1.0), ratio=(0.8, 1.25), seed=seed),
                RandomTranslation(padding=2, seed=seed + 1), *to_input()]

    def plain(path) -> Loader:
        return Loader(path, 256, num_workers=2, order=OrderOption.SEQUENTIAL, drop_last=False,
                      pipelines={"image": [SimpleRGBImageDecoder(), *to_input()], "label": [IntDecoder(), ToTensor()]})

    class OnDigits(base):
        def initialize_model(self) -> None:
            backbone = MLP(3072, num_classes=0) if model == "mlp" else ResNetSmall(num_classes=0)
            self.model = CoKeHeads(backbone, backbone.out_features, dim=64) if views > 1 else EmbeddingNet(backbone, 64)

        def initialize_train_loader(self) -> None:
            scale = 0.3 if views > 1 else 0.6
            pipelines = {"image": view(10, scale), "label": [IntDecoder(), ToTensor()]}
            pipelines.update({f"view{v}": view(10 * v, scale) for v in range(2, views + 1)})
            self.train_loader = Loader(paths["train"], 64, num_workers=2, order=OrderOption.RANDOM, seed=0,
                                       pipelines=pipelines, drop_last=True,
                                       custom_field_mapper={f"view{v}": "image" for v in range(2, views + 1)})

        def initialize_val_loader(self) -> None:
            self.val_loader = KNNValLoader(plain(paths["val"]), bank=plain(paths["train"]))
    return OnDigits


def at_initialisation(trainer) -> dict:
    """The evaluation record of the trainer's (random) encoder before any training step."""
    trainer.epoch_record = {}
    trainer.evaluate()
    return dict(trainer.epoch_record)


@pytest.mark.parametrize("epochs, margin", [pytest.param(3, 0.08, id="3-epochs"),
                                            pytest.param(8, 0.12, id="8-epochs", marks=pytest.mark.slow)])
def test_ssl_multiview_beats_a_random_encoder_on_digits(digits, tmp_path, task_trainer, epochs, margin):
    set_values({**COKE, "training.epochs": epochs, "scheduler.warmup_epochs": 1.0, "logging.run_id": "ssl"})
    trainer = digits_trainer(task_trainer("ssl-multiview"), digits, "resnet-small", views=2)()
    random_knn = at_initialisation(trainer)["val_knn_top1"]
    record = trainer.run()
    curve = [round(r["val_knn_top1"], 3) for r in read_log(tmp_path / "ssl") if r.get("kind") == "epoch"]
    print(f"\nssl-multiview resnet-small kNN top-1: random encoder {random_knn:.3f}, per epoch {curve}")
    assert record["val_knn_top1"] > random_knn + margin, (random_knn, curve)


def test_metric_learning_lifts_precision_at_1_on_digits(digits, tmp_path, task_trainer):
    set_values({**TRIPLET, "training.epochs": 2, "logging.run_id": "ml"})
    trainer = digits_trainer(task_trainer("metric-learning"), digits, "resnet-small")()
    random = at_initialisation(trainer)
    record = trainer.run()
    print(f"\nmetric-learning resnet-small: precision@1 {random['val_precision_at_1']:.3f} (random) -> "
          f"{record['val_precision_at_1']:.3f}, kNN top-1 {random['val_knn_top1']:.3f} -> {record['val_knn_top1']:.3f}")
    assert record["val_precision_at_1"] > max(0.7, random["val_precision_at_1"] + 0.15), (random, record)
    assert record["val_knn_top1"] > 0.7
