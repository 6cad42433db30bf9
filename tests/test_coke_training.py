"""CoKe's three recipes trained by the SSL trainer on the digits .beton (32 px, crops scaled down from
224/96 px to 32/16 px): the loss goes down and the backbone's kNN accuracy beats the random encoder's.

Each run is the whole training side: the recipe's seeded FFCV pipeline with each sample's dataset index
(SampleIndexDecoder), CoKe's heads (projector + predictor) on a small ResNet, views of two sizes through
the backbone once per size, `criterion(projections, indices, predictions)`, `end_epoch()` after each
epoch, and the recipe's first epoch with lr 0 (a pure clustering epoch).

"Random encoder" is the network at initialisation (BatchNorm statistics at their defaults). The lr-0 first
epoch leaves the weights as they are but updates those statistics, which alone lifts the kNN accuracy (the
epoch-0 figure printed); the loss is compared inside the last epoch, where the targets (last epoch's labels)
and the logit centers stay fixed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from test_tasks import config  # noqa: F401  (the fixture)

from torchstrap_runtime.config import set_values
from torchstrap_runtime.evaluation import KNNValLoader
from torchstrap_runtime.loggers import read_log
from torchstrap_runtime.methods.coke import RECIPES, CoKeHeads
from torchstrap_runtime.models import ResNetSmall

MEAN = np.array([0.5, 0.5, 0.5]) * 255
# the authors' recipes, scaled down for 1437 digits: fewer and smaller clusterings, 64-d embeddings
SMALL = {"embedding_size": 64, "num_clusters": [10, 20]}


@pytest.fixture(autouse=True)
def optimizer_settings(config):
    """test_tasks' config fixture (standard sections, the evaluation section, a quiet run folder), then AdamW."""
    set_values({"optimizer.name": "adamw", "optimizer.lr": 0.002, "optimizer.weight_decay": 0.0001,
                "scheduler.warmup_epochs": 0.0})


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    from torchstrap_runtime.data import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"))


def recipe_trainer(base: type, recipe_name: str, paths: dict, small_crops: int = 2) -> type:
    """The ssl-multiview experiment's Trainer (`base`) with the recipe's pipeline at 32 px (small crops 16 px), CoKe heads, its criterion."""
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import Convert, NormalizeImage, ToTensor, ToTorchImage

    from torchstrap_runtime.data import Loader, OrderOption, SimpleRGBImageDecoder
    from torchstrap_runtime.methods.coke import views

    recipe = RECIPES[recipe_name]

    def to_input() -> list:
        return [NormalizeImage(MEAN, MEAN, np.float32), ToTensor(), ToTorchImage(), Convert(torch.float32)]

    options = dict(seed=0, image_size=32, scale=(0.3, 1.0), flip_p=0.0, to_input=to_input, index=True)
    if recipe_name == "coke_multi":
        options.update(num_small_crops=small_crops, small_size=16, small_scale=(0.2, 0.6))

    def plain(path) -> Loader:
        return Loader(path, 256, num_workers=2, order=OrderOption.SEQUENTIAL, drop_last=False,
                      pipelines={"image": [SimpleRGBImageDecoder(), *to_input()], "label": [IntDecoder(), ToTensor()]})

    class RecipeOnDigits(base):
        def initialize_model(self) -> None:
            backbone = ResNetSmall(num_classes=0)
            self.model = CoKeHeads(backbone, backbone.out_features, dim=SMALL["embedding_size"], hidden_dim=128)

        def initialize_train_loader(self) -> None:
            pipelines, mapper = getattr(views, recipe.views)(**options)
            self.train_loader = Loader(paths["train"], 64, num_workers=2, order=OrderOption.RANDOM, seed=0,
                                       pipelines=pipelines, custom_field_mapper=mapper, drop_last=True)

        def initialize_val_loader(self) -> None:
            self.val_loader = KNNValLoader(plain(paths["val"]), bank=plain(paths["train"]))

    set_values({"criterion.name": "", "criterion.params": SMALL, "ssl.recipe": recipe_name, "ssl.small_crops": small_crops,
                "ssl.first_epoch_lr_zero": True})
    return RecipeOnDigits


def random_encoder_knn(trainer) -> float:
    trainer.epoch_record = {}
    trainer.evaluate()
    return trainer.epoch_record["val_knn_top1"]


@pytest.mark.parametrize("recipe, epochs, batches", [
    pytest.param("coke_double", 2, 10, id="coke_double-10-batches"),
    pytest.param("coke_double", 2, 0, id="coke_double", marks=pytest.mark.slow),
    pytest.param("coke_single", 3, 0, id="coke_single", marks=pytest.mark.slow),
    pytest.param("coke_multi", 2, 0, id="coke_multi", marks=pytest.mark.slow),
])
def test_recipe_lowers_the_loss_and_beats_the_random_encoder(digits, tmp_path, task_trainer, recipe, epochs, batches):
    set_values({"training.epochs": epochs, "logging.run_id": recipe, "logging.log_every": 1,
                "scheduler.name": "none", "training.limit_train_batches": batches})
    trainer = recipe_trainer(task_trainer("ssl-multiview"), recipe, digits)()
    assert trainer.criterion.num_samples == 1437  # the training set's size, filled in by the trainer
    random_knn = random_encoder_knn(trainer)
    start = time.perf_counter()
    record = trainer.run()
    log = read_log(tmp_path / recipe)
    knn = [round(r["val_knn_top1"], 3) for r in log if r.get("kind") == "epoch"]
    # within an epoch the targets (last epoch's labels) and the logit centers stay fixed: the loss the
    # optimizer lowers. Epoch 0 runs with lr 0 (clustering only): its loss stays where it started.
    steps = {e: [r["train_loss"] for r in log if r.get("kind") == "train_step" and r["epoch"] == e]
             for e in range(epochs)}
    w = 3 if batches else 5  # steps averaged at each end of the epoch
    first, last = (float(np.mean(steps[epochs - 1][:w])), float(np.mean(steps[epochs - 1][-w:])))
    print(f"\n{recipe}: {time.perf_counter() - start:.0f} s; last epoch's loss, first {w} steps {first:.3f} -> "
          f"last {w} {last:.3f}; epoch 0 (lr 0) {np.mean(steps[0][:w]):.3f} -> {np.mean(steps[0][-w:]):.3f}; "
          f"kNN top-1 random encoder {random_knn:.3f} -> per epoch {knn}")
    assert "coke/head0/dual_mean" in record  # end_epoch() ran
    assert last < first - 0.05, steps[epochs - 1]
    assert record["val_knn_top1"] > random_knn + 0.05, (random_knn, knn)


def test_first_epoch_of_a_recipe_only_clusters(digits, task_trainer):
    """Epoch 0 runs with lr 0: the weights stay as they were, the centers move (the recipe's clustering epoch)."""
    set_values({"training.epochs": 1, "training.limit_train_batches": 3, "logging.eval_each_epoch": False,
                "logging.run_id": "clustering", "scheduler.name": "none"})
    trainer = recipe_trainer(task_trainer("ssl-multiview"), "coke_double", digits)()
    weights = {k: v.clone() for k, v in trainer.raw_model.named_parameters()}
    centers = trainer.criterion.centers_0.clone()
    trainer.run()
    assert all(torch.equal(weights[k], v) for k, v in trainer.raw_model.named_parameters())
    assert not torch.equal(trainer.criterion.centers_0, centers)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.002  # given back after each step (no scheduler)


def test_index_output_is_each_samples_dataset_index_in_ours_and_upstream_ffcv(digits):
    """`index=True` adds 'index' (SampleIndexDecoder over 'label'), last in the batch; upstream FFCV reads it too."""
    from ffcv.loader import Loader as FFCVLoader
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import ToTensor

    from torchstrap_runtime.data import Loader, OrderOption, SampleIndexDecoder
    from torchstrap_runtime.methods.coke.views import coke_imagenet_double_view

    pipelines, mapper = coke_imagenet_double_view(seed=0, image_size=16, index=True)
    assert list(pipelines)[-1] == "index" and mapper["index"] == "label"
    loader = Loader(digits["train"], 50, num_workers=1, order=OrderOption.RANDOM, seed=3, pipelines=pipelines,
                    custom_field_mapper=mapper)
    batch = next(iter(loader))
    assert len(batch) == 4 and batch[-1].dtype == torch.int64
    assert batch[-1].reshape(-1).tolist() == loader.epoch_order(0)[:50].tolist()
    upstream = FFCVLoader(str(digits["train"]), 50, num_workers=1, order=OrderOption.SEQUENTIAL,
                          pipelines={"index": PipelineSpec("label", transforms=[SampleIndexDecoder(), ToTensor()])})
    assert next(iter(upstream))[-1].reshape(-1).tolist() == list(range(50))


def test_coke_heads_run_the_backbone_once_per_resolution():
    backbone = ResNetSmall(num_classes=0)
    calls = []
    backbone.register_forward_hook(lambda module, inputs, output: calls.append(tuple(inputs[0].shape)))
    heads = CoKeHeads(backbone, backbone.out_features, dim=8, hidden_dim=16).eval()
    views = [torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32), *[torch.randn(3, 3, 16, 16) for _ in range(4)]]
    projections, predictions = heads(views)
    assert calls == [(6, 3, 32, 32), (12, 3, 16, 16)]  # 2 large views together, then 4 small crops together
    assert [tuple(p.shape) for p in projections + predictions] == [(3, 8)] * 12
    alone = heads(views[4])  # eval mode: the same as one view on its own
    torch.testing.assert_close(projections[4], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(predictions[4], alone[1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_make_augmentations_draws_the_multi_crop_views_for_coke_multi(tmp_path):
    """The template's show_augmentations.py (`make augmentations`) adds coke_multicrop.png when the
    experiment's config says ssl.recipe: coke_multi, and only then."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    for recipe, expected in (("coke_multi", True), ("coke_double", False)):
        work = tmp_path / recipe
        (work / "configs").mkdir(parents=True)
        (work / "configs" / "default.yaml").write_text(f"ssl:\n  recipe: {recipe}\n  seed: 1\n")
        out = subprocess.run([sys.executable, str(root / "template" / "scripts" / "show_augmentations.py")], cwd=work,
                             capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(root)})
        assert out.returncode == 0, out.stderr[-2000:]
        assert (work / "augmentations" / "coke_multicrop.png").exists() == expected
