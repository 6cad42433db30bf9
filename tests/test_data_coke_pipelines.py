"""CoKe's three recipes as seeded FFCV pipelines, on a small real .beton of JPEGs."""
import numpy as np
import pytest
import torch

from torchstrap_runtime.data import Loader, OrderOption, write_dataset
from torchstrap_runtime.methods.coke.views import (coke_imagenet_double_view, coke_imagenet_multi_view,
                                                   coke_imagenet_single_view, op_seed_names)
from test_data import colour_digits

N, SIZE, SMALL = 24, 32, 16


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    images, labels = colour_digits(N)
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 64 px JPEGs
    return write_dataset(tmp_path_factory.mktemp("coke") / "jpeg.beton", big, labels, write_mode="jpg")


def load(beton, built, epochs=(0,)):
    """Batches of each epoch in `epochs`, from one loader."""
    pipelines, mapper = built
    loader = Loader(beton, batch_size=12, num_workers=2, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines=pipelines, custom_field_mapper=mapper)
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        out += [[t.clone() for t in batch] for batch in loader]
    return out


def multi(seed, **kw):
    return coke_imagenet_multi_view(seed=seed, image_size=SIZE, small_size=SMALL, num_small_crops=2, **kw)


def test_multi_view_shapes_determinism_and_distinct_views(beton):
    first, again = load(beton, multi(0), epochs=(0, 1)), load(beton, multi(0))
    image, label, view2, small1, small2 = first[0]
    assert image.shape == view2.shape == (12, 3, SIZE, SIZE) and image.dtype == torch.float32
    assert small1.shape == small2.shape == (12, 3, SMALL, SMALL) and label.shape[0] == 12
    assert abs(float(image.mean())) < 1.5  # ImageNet-normalised
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            assert torch.equal(x, y)  # same seed, same batches
    assert not torch.equal(image, view2) and not torch.equal(small1, small2)  # each view its own draws
    assert not torch.equal(first[2][0], image)  # epoch 1 draws again


def test_single_and_double_view_recipes(beton):
    (image, label), = [b for b in load(beton, coke_imagenet_single_view(seed=3, image_size=SIZE))][:1]
    assert image.shape == (12, 3, SIZE, SIZE)
    pipelines, mapper = coke_imagenet_double_view(seed=3, image_size=SIZE)
    assert mapper == {"view2": "image"}
    names = [type(op).__name__ for op in pipelines["view2"]]
    assert "RandomSolarization" in names and "RandomSolarization" not in [type(op).__name__ for op in pipelines["image"]]
    blur1, blur2 = (next(op for op in pipelines[v] if type(op).__name__ == "RandomGaussianBlur") for v in ("image", "view2"))
    assert (blur1.p, blur2.p) == (1.0, 0.1) and blur1.sigma == (0.1, 2.0)
    jitter = next(op for op in pipelines["image"] if type(op).__name__ == "RandomColorJitter")
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue, jitter.p) == (0.4, 0.4, 0.2, 0.1, 0.8)
    assert jitter.random_order
    batch = load(beton, (pipelines, mapper))[0]
    assert len(batch) == 3 and not torch.equal(batch[0], batch[2])


def test_op_seeds_are_distinct_derived_and_overridable():
    pipelines, _ = coke_imagenet_multi_view(seed=5)
    seeds = [op.seed for ops in pipelines.values() if ops for op in ops if hasattr(op, "stream")]
    assert len(seeds) == len(set(seeds)) == 2 * 5 + 1 + 6 * 5  # view 2 adds solarization
    assert all(s is not None for s in seeds)
    fresh, _ = coke_imagenet_multi_view(seed=None)
    assert all(op.seed is None for ops in fresh.values() if ops for op in ops if hasattr(op, "stream"))
    names = op_seed_names(coke_imagenet_multi_view)
    assert "view2/solarize" in names and "small6/blur" in names and "image/solarize" not in names
    pinned, _ = coke_imagenet_multi_view(seed=5, op_seeds={"small3/crop": 42})
    assert pinned["small3"][0].seed == 42 and pinned["small2"][0].seed == pipelines["small2"][0].seed
    with pytest.raises(ValueError, match="not ops of this recipe"):
        coke_imagenet_double_view(seed=1, op_seeds={"small1/crop": 1})


def test_multicrop_picture(beton, tmp_path):
    from PIL import Image

    from torchstrap_runtime.data.pictures import save_coke_multicrop_grid

    path = save_coke_multicrop_grid(beton, tmp_path / "multicrop.png", seed=0, samples=2)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 600
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50
