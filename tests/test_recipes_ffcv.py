"""FFCV's recipes against transcriptions of their code (tests/ffcv_reference.py): the learning rate of every
iteration over whole runs, the resolution of every epoch, BlurPool's placement and output, ffcv-imagenet's
optimizer groups, the CIFAR example's ResNet-9; the seeded Cutout op; the loader's decoder following the
resolution from one epoch to the next."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ffcv.fields.basics import IntDecoder

import ffcv_reference as ref
from torchstrap_runtime.data import Cutout, Loader, OrderOption, RandomResizedCrop, SimpleRGBImageDecoder, write_dataset
from torchstrap_runtime.data.rng import op_key_py, randint_py, sample_key_py
from torchstrap_runtime.models import ResNet9, build_model, resnet18, resnet50
from torchstrap_runtime.optim import build_scheduler
from torchstrap_runtime.recipes import ffcv
from torchstrap_runtime.recipes.ffcv_lr import schedule_lr

# (epochs, start_ramp, end_ramp) of ffcv-imagenet's rn50_*/rn18_* configs (min_res 160, max_res 192)
IMAGENET_BUDGETS = [(16, 11, 13), (24, 17, 20), (32, 23, 27), (40, 29, 34), (56, 41, 48), (88, 65, 76)]


def run_lrs(name: str, lr: float, epochs: int, iters: int, **options) -> list[float]:
    """The lr of group 0 at every optimizer step of a run, as the Trainer's per-step scheduler sets it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    scheduler = build_scheduler(name, optimizer, steps_per_epoch=iters, epochs=epochs, **options)
    lrs = []
    for _ in range(epochs * iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("lr, epochs, peak, iters", [(1.7, 16, 2, 7), (0.5, 88, 2, 5), (1.7, 24, 2, 313),
                                                     (0.5, 10, 0, 4), (0.3, 5, 5, 3)])
def test_ffcv_cyclic_sets_ffcv_imagenets_lr_at_every_iteration(lr, epochs, peak, iters):
    expected = ref.imagenet_run_lrs(lambda e: ref.get_cyclic_lr(e, lr, epochs, peak), epochs, iters)
    assert run_lrs("ffcv_cyclic", lr, epochs, iters, lr_peak_epoch=peak) == expected


@pytest.mark.parametrize("lr, epochs, ratio, length, iters", [(0.5, 90, 0.1, 30, 4), (1.0, 12, 0.5, 5, 6)])
def test_ffcv_step_sets_ffcv_imagenets_step_lr_at_every_iteration(lr, epochs, ratio, length, iters):
    expected = ref.imagenet_run_lrs(lambda e: ref.get_step_lr(e, lr, ratio, length, epochs), epochs, iters)
    assert run_lrs("ffcv_step", lr, epochs, iters, gamma=ratio, step_size=length) == expected


@pytest.mark.parametrize("lr, epochs, peak, iters", [(0.5, 24, 5, 97), (0.5, 24, 5, 3), (0.2, 7, 2, 11)])
def test_ffcv_cifar_cyclic_sets_the_cifar_examples_lr_at_every_iteration(lr, epochs, peak, iters):
    factors = ref.cifar_lr_schedule(epochs, iters, peak)
    expected = [lr * factors[step] for step in range(epochs * iters)]
    lrs = run_lrs("ffcv_cifar_cyclic", lr, epochs, iters, lr_peak_epoch=peak)
    assert lrs == expected and lrs[0] == 0.0 and max(lrs) == lr


def test_schedules_keep_each_groups_own_peak_and_resume_from_a_state_dict():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.2}], lr=1.7)
    scheduler = build_scheduler("ffcv_cyclic", optimizer, steps_per_epoch=5, epochs=8, lr_peak_epoch=2)
    for _ in range(13):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [schedule_lr("ffcv_cyclic", 13, base, 5, 8) for base in (1.7, 0.2)]
    state = copy.deepcopy(scheduler.state_dict())
    assert "lr_at" not in state and torch.save(state, __import__("io").BytesIO()) is None
    fresh = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.2}], lr=1.7)
    resumed = build_scheduler("ffcv_cyclic", fresh, steps_per_epoch=5, epochs=8, lr_peak_epoch=2)
    resumed.load_state_dict(state)
    fresh.step()
    resumed.step()
    scheduler.step()
    assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_a_peak_after_the_last_epoch_is_refused():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="scheduler.lr_peak_epoch must be in \\[0, training.epochs = 4\\], got 5"):
        build_scheduler("ffcv_cyclic", optimizer, steps_per_epoch=3, epochs=4, lr_peak_epoch=5)


@pytest.mark.parametrize("epochs, start, end", IMAGENET_BUDGETS + [(30, 10, 20), (12, 0, 12), (9, 3, 4), (50, 5, 45)])
@pytest.mark.parametrize("min_res, max_res", [(160, 192), (160, 256), (128, 224), (96, 100)])
def test_resolution_of_every_epoch_is_ffcv_imagenets(epochs, start, end, min_res, max_res):
    ours = [ffcv.get_resolution(e, min_res, max_res, end, start) for e in range(epochs + 1)]
    assert ours == [ref.get_resolution(e, min_res, max_res, end, start) for e in range(epochs + 1)]


def test_resolution_ramp_rounds_half_to_even_like_numpy():
    # epoch 1 of a 0..2 ramp from 160 to 192 interpolates 176 = 5.5 x 32: numpy rounds half to even, to 192
    assert ffcv.get_resolution(1, 160, 192, 2, 0) == ref.get_resolution(1, 160, 192, 2, 0) == 192
    assert ffcv.get_resolution(3, 160, 192, 4, 2) == 192 and ffcv.get_resolution(1, 128, 160, 2, 0) == 128
    with pytest.raises(ValueError, match="resolution.min_res \\(200\\) must not exceed resolution.max_res \\(192\\)"):
        ffcv.get_resolution(0, 200, 192, 2, 0)


@pytest.mark.parametrize("build", [resnet50, resnet18], ids=["resnet50", "resnet18"])
def test_blurpool_wraps_the_convolutions_ffcv_imagenet_wraps_and_computes_the_same(build):
    torch.manual_seed(0)
    ours = build(num_classes=10)
    theirs = copy.deepcopy(ours)
    ffcv.apply_blurpool(ours)
    ref.apply_blurpool(theirs)
    blurred = [name for name, m in ours.named_modules() if isinstance(m, ffcv.BlurPoolConv2d)]
    assert blurred == [name for name, m in theirs.named_modules() if isinstance(m, ref.BlurPoolConv2d)]
    assert "conv1" not in blurred and "layer2.0.downsample.0" in blurred  # the 3-channel stem keeps its stride
    assert len(blurred) == 6  # layers 2-4: the strided conv of the first block and its shortcut's
    assert ("layer2.0.conv2" if build is resnet50 else "layer2.0.conv1") in blurred
    ours.eval(), theirs.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images), rtol=0, atol=0)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_bn_parameters_lose_weight_decay_as_in_ffcv_imagenet(monkeypatch):
    model = resnet50(num_classes=10)
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "weight_decay": 1e-4}], lr=1.0)
    ffcv.bn_without_weight_decay(optimizer, model, bn_wd=False)
    expected = ref.imagenet_param_groups(model, 1e-4)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert by_decay == {g["weight_decay"]: {id(p) for p in g["params"]} for g in expected}
    assert any("downsample.1" in name for name, p in model.named_parameters() if id(p) in by_decay[1e-4])


def test_resnet9_is_the_cifar_examples_network():
    ours, theirs = build_model("resnet9", 10), ref.construct_model(10)
    assert isinstance(ours, ResNet9)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 2_274_880
    theirs.load_state_dict(dict(zip(theirs.state_dict(), ours.state_dict().values())))
    ours.eval(), theirs.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images), rtol=0, atol=0)
    features = build_model("resnet9", 0)
    assert features.out_features == 128 and features(images).shape == (3, 128)


def test_flip_tta_adds_the_logits_of_the_mirrored_images():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 2))
    images = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(ffcv.flip_tta(model, images), model(images) + model(images.flip(-1)))


# ---------------------------------------------------------------------- Cutout and the loader
N = 24


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    images = np.random.default_rng(0).integers(1, 255, (N, 20, 24, 3), dtype=np.uint8)
    return write_dataset(tmp_path_factory.mktemp("recipes") / "images.beton", images, np.arange(N) % 3,
                         extra_fields={"index": np.arange(N)}), images


def loaded(path, image_pipeline, epochs=(0,)) -> dict:
    """{epoch: (images in dataset order)}."""
    loader = Loader(path, batch_size=8, num_workers=1, order=OrderOption.RANDOM, seed=1, drop_last=False,
                    pipelines={"image": image_pipeline, "label": None, "index": [IntDecoder()]})
    result = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        batches = [(images.copy(), index.ravel().copy()) for images, index in loader]
        images = np.concatenate([b[0] for b in batches])
        placed = np.empty_like(images)
        placed[np.concatenate([b[1] for b in batches])] = images
        result[epoch] = placed
    return result


def test_cutout_fills_one_square_per_image_at_the_drawn_position(beton):
    path, stored = beton
    op = Cutout(6, fill=(125, 122, 113), seed=5)
    out = loaded(path, [SimpleRGBImageDecoder(), op], epochs=(0, 2))
    for epoch, images in out.items():
        key = op_key_py(5, Cutout.stream, epoch)
        for i in range(N):
            k = sample_key_py(key, i)
            top, left = randint_py(k, 0, 0, 20 - 6), randint_py(k, 1, 0, 24 - 6)
            expected = stored[i].copy()
            expected[top:top + 6, left:left + 6] = (125, 122, 113)
            assert np.array_equal(images[i], expected), (epoch, i)
    assert not np.array_equal(out[0], out[2])


def test_cutout_same_seed_same_images_none_fresh(beton):
    path, _ = beton
    first = loaded(path, [SimpleRGBImageDecoder(), Cutout(8, seed=3)])[0]
    assert np.array_equal(first, loaded(path, [SimpleRGBImageDecoder(), Cutout(8, seed=3)])[0])
    assert not np.array_equal(first, loaded(path, [SimpleRGBImageDecoder(), Cutout(8, seed=4)])[0])
    fresh = [loaded(path, [SimpleRGBImageDecoder(), Cutout(8, seed=None)])[0] for _ in range(2)]
    assert not np.array_equal(*fresh)


def test_cutout_refuses_bad_arguments(beton):
    with pytest.raises(ValueError, match="Cutout: crop_size must be an int >= 1, got 0"):
        Cutout(0)
    with pytest.raises(ValueError, match="Cutout: fill must be 3 ints"):
        Cutout(4, fill=(300, 0, 0))
    with pytest.raises(ValueError, match="Cutout: crop_size 21 does not fit in 20x24 images"):
        loaded(beton[0], [SimpleRGBImageDecoder(), Cutout(21, seed=0)])


def test_the_loaders_decoder_follows_the_resolution_of_each_epoch(beton):
    path, _ = beton
    crop = RandomResizedCrop((16, 16), seed=2)
    loader = Loader(path, batch_size=8, num_workers=1, order=OrderOption.RANDOM, seed=1,
                    pipelines={"image": [crop], "label": [IntDecoder()], "index": None})
    sizes = []
    for epoch, resolution in enumerate((16, 8, 8, 12)):
        ffcv.set_resolution(loader, resolution)
        shapes = {images.shape[1:3] for images, _ in loader}
        sizes.append(shapes)
    assert sizes == [{(16, 16)}, {(8, 8)}, {(8, 8)}, {(12, 12)}]
    with pytest.raises(ValueError, match="progressive resizing needs a loader whose 'image' pipeline starts with a "
                                         "resizing decoder"):
        ffcv.set_resolution(Loader(path, batch_size=8, pipelines={"image": [SimpleRGBImageDecoder()]}), 8)
