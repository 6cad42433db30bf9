"""The product's dotted names import and work, each the runtime's one implementation."""

from __future__ import annotations

import subprocess
import sys

import torch

from experiments import subprocess_env
from torchstrap.generator.template_source import CHECKOUT


def test_import_torchstrap_does_not_import_torch():
    code = "import sys, torchstrap; print(torchstrap.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(CHECKOUT),
                         timeout=120)
    version, torch_imported = out.stdout.split()
    assert out.returncode == 0 and version.count(".") == 2 and torch_imported == "False", out.stderr


def test_trainer_and_config():
    import torchstrap
    from torchstrap.config import Param, Section, param
    from torchstrap_runtime.config import Float, reset_config, set_values
    from torchstrap_runtime.trainer import Trainer

    assert torchstrap.Trainer is Trainer
    reset_config(keep_sections=True)
    Section("public_names", "a section for this test").params(lr=Param(Float(), "learning rate", default=0.1))

    @param("public_names.lr")
    def learning_rate(lr: float) -> float:
        return lr

    assert learning_rate() == 0.1 and learning_rate(lr=0.5) == 0.5
    set_values({"public_names.lr": 0.25})
    assert learning_rate() == 0.25
    reset_config(keep_sections=True)


def test_image_ops_criteria_and_pipelines():
    from torchstrap.criterion import coke_multi_view, coke_single_view
    from torchstrap.data.ffcv.transforms import image
    from torchstrap.torchvision_pipelines import (coke_imagenet_double_view, coke_imagenet_multi_view,
                                                  coke_imagenet_single_view)
    from torchstrap_runtime import data

    assert len(image.__all__) == 11 and all(getattr(image, name) is getattr(data, name) for name in image.__all__)
    crop = image.RandomResizedCrop((16, 16), seed=3)
    assert crop.seed == 3
    criterion = coke_single_view(embedding_size=8, num_samples=16, num_clusters=[4])
    views = [torch.nn.functional.normalize(torch.randn(16, 8), dim=1)]
    assert torch.isfinite(criterion(views, torch.arange(16)))
    assert coke_multi_view(embedding_size=8, num_samples=16, num_clusters=[4]).num_heads == 1
    for builder, outputs in ((coke_imagenet_single_view, ["image", "label"]),
                             (coke_imagenet_double_view, ["image", "view2", "label"]),
                             (coke_imagenet_multi_view, ["image", "view2"] + [f"small{i}" for i in range(1, 7)] + ["label"])):
        pipelines, mapper = builder(seed=0)
        assert sorted(pipelines) == sorted(outputs), builder.__name__
        assert all(mapper[name] == "image" for name in outputs if name not in ("image", "label"))
