"""The ops CoKe's pipelines add (Gaussian blur, colour jitter in random order, bilinear crops) against plain
numpy/PIL references on the same draws (the pure-Python RNG twin)."""
import math

import cv2
import numpy as np
import pytest
import torch
from ffcv.fields.basics import IntDecoder
from PIL import Image

from torchstrap_runtime.data import (Loader, OrderOption, RandomColorJitter, RandomGaussianBlur, RandomResizedCrop,
                                     SimpleRGBImageDecoder, write_dataset)
from torchstrap_runtime.data.rng import op_key_py, randint_py, sample_key_py, uniform_py
from test_data import colour_digits
from test_data_ops import crop_reference, jitter_reference

N = 200
EPOCH = 2
OPS = {
    "blur": RandomGaussianBlur(kernel_size=(5, 7), sigma=(0.1, 2.0), p=0.6, seed=31),
    "jitter": RandomColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, p=0.9, seed=32,
                                random_order=True),
    "crop": RandomResizedCrop((24, 20), scale=(0.2, 0.9), ratio=(0.5, 2.0), seed=33, interpolation="bilinear"),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    images, labels = colour_digits(N)
    beton = write_dataset(tmp_path_factory.mktemp("coke_ops") / "ops.beton", images, labels,
                          extra_fields={"index": np.arange(N)})
    pipelines = {"image": [SimpleRGBImageDecoder()], "label": None, "index": [IntDecoder()],
                 "blur": [SimpleRGBImageDecoder(), OPS["blur"]], "jitter": [SimpleRGBImageDecoder(), OPS["jitter"]],
                 "crop": [OPS["crop"]]}
    loader = Loader(beton, batch_size=64, num_workers=2, order=OrderOption.RANDOM, seed=0, drop_last=False,
                    pipelines=pipelines, custom_field_mapper={name: "image" for name in OPS}, start_epoch=EPOCH)
    names = ["image", "index", *OPS]
    batches = [[a.copy() for a in batch] for batch in loader]
    columns = {name: np.concatenate([b[i] for b in batches]) for i, name in enumerate(names)}
    order = columns.pop("index").ravel()
    result = {}
    for name, values in columns.items():
        result[name] = np.empty_like(values)
        result[name][order] = values
    result["stored"] = images
    return result


def keys(op):
    key = op_key_py(op.seed, op.stream, EPOCH)
    return [sample_key_py(key, i) for i in range(N)]


def reflect_pad(x, ry, rx):
    return np.pad(x, ((ry, ry), (rx, rx), (0, 0)), mode="reflect")


def gaussian(size, sigma):
    t = np.arange(size) - (size - 1) / 2
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def blur_reference(image, k, op):
    """numpy: separable float64 convolution with reflect padding, rounded half up."""
    if uniform_py(k, 0) >= op.p:
        return image
    sigma = op.sigma[0] + (op.sigma[1] - op.sigma[0]) * uniform_py(k, 1)
    (sx, sy) = op.kernel_size
    x = reflect_pad(image.astype(np.float64), sy // 2, sx // 2)
    wx, wy = gaussian(sx, sigma), gaussian(sy, sigma)
    rows = sum(wx[j] * x[:, j:j + image.shape[1]] for j in range(sx))
    out = sum(wy[j] * rows[j:j + image.shape[0]] for j in range(sy))
    return np.floor(out + 0.5).clip(0, 255).astype(np.uint8)


def torchvision_blur(image, sigma, size):
    """torchvision's tensor gaussian_blur: float32 2-D kernel, reflect padding, conv2d, round."""
    sx, sy = size
    k2 = torch.outer(torch.tensor(gaussian(sy, sigma), dtype=torch.float32),
                     torch.tensor(gaussian(sx, sigma), dtype=torch.float32))
    x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[:, None]
    x = torch.nn.functional.pad(x, [sx // 2, sx // 2, sy // 2, sy // 2], mode="reflect")
    return torch.round(torch.nn.functional.conv2d(x, k2[None, None]))[:, 0].permute(1, 2, 0).numpy()


def test_gaussian_blur_matches_numpy_and_torchvision(outputs):
    op, stored = OPS["blur"], outputs["stored"]
    ks = keys(op)
    for i in range(N):
        np.testing.assert_array_equal(outputs["blur"][i], blur_reference(stored[i], ks[i], op), err_msg=f"sample {i}")
    chosen = [i for i in range(N) if uniform_py(ks[i], 0) < op.p]
    assert abs(len(chosen) / N - op.p) < 0.1
    off = []
    for i in chosen[:40]:
        sigma = op.sigma[0] + (op.sigma[1] - op.sigma[0]) * uniform_py(ks[i], 1)
        diff = np.abs(outputs["blur"][i].astype(int) - torchvision_blur(stored[i], sigma, op.kernel_size))
        assert diff.max() <= 1
        off.append(np.mean(diff > 0))
    assert np.mean(off) < 0.01


def jitter_in_order_reference(image, k, op):
    """The four changes in the order of a Fisher-Yates shuffle on draws 5-7, over the whole image."""
    if uniform_py(k, 0) >= op.p:
        return image
    order = [0, 1, 2, 3]
    for j in (3, 2, 1):
        r = randint_py(k, 8 - j, 0, j)
        order[j], order[r] = order[r], order[j]
    lo = lambda m: max(0.0, 1 - m)
    f = [lo(m) + (1 + m - lo(m)) * uniform_py(k, d) for d, m in ((1, op.brightness), (2, op.contrast),
                                                                 (3, op.saturation))]
    hf = -op.hue + 2 * op.hue * uniform_py(k, 4)
    luma = lambda v: 0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2]
    x = image.astype(np.float64)
    for step in order:
        if step == 0:
            x = np.clip(f[0] * x, 0, 255)
        elif step == 1:
            x = np.clip(f[1] * x + (1 - f[1]) * luma(x).mean(), 0, 255)
        elif step == 2:
            x = np.clip(f[2] * x + (1 - f[2]) * luma(x)[..., None], 0, 255)
        elif hf != 0:
            hsv = cv2.cvtColor((x / 255).astype(np.float32), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0] + 360 * hf) % 360
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float64) * 255
    return np.floor(x + 0.5).clip(0, 255).astype(np.uint8), order


def test_color_jitter_random_order_matches_numpy(outputs):
    op, stored = OPS["jitter"], outputs["stored"]
    ks = keys(op)
    exact, orders = [], set()
    for i in range(N):
        if uniform_py(ks[i], 0) >= op.p:
            np.testing.assert_array_equal(outputs["jitter"][i], stored[i])
            continue
        ref, order = jitter_in_order_reference(stored[i], ks[i], op)
        orders.add(tuple(order))
        diff = np.abs(outputs["jitter"][i].astype(int) - ref.astype(int))
        assert diff.max() <= 1, f"sample {i}"  # float32 HSV in the reference: off by one at most
        exact.append(np.mean(diff == 0))
    assert np.mean(exact) > 0.98
    assert len(orders) >= 20  # most of the 24 orders occur
    # the identity order gives the fixed-order op's result
    fixed = RandomColorJitter(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, p=0.9, seed=32)
    identity = [i for i in range(N) if uniform_py(ks[i], 0) < op.p
                and jitter_in_order_reference(stored[i], ks[i], op)[1] == [0, 1, 2, 3]]
    assert identity
    for i in identity:
        assert np.abs(outputs["jitter"][i].astype(int) - jitter_reference(stored[i], ks[i], fixed).astype(int)).max() <= 1


def pil_bilinear(image, size, axis_first):
    """PIL's bilinear resize, one axis after the other (`axis_first` 'x' or 'y'); size (width, height)."""
    img = Image.fromarray(image)
    mid = (size[0], img.height) if axis_first == "x" else (img.width, size[1])
    return np.asarray(img.resize(mid, Image.BILINEAR).resize(size, Image.BILINEAR))


def test_random_resized_crop_bilinear_matches_pil(outputs):
    """Exactly PIL's passes, horizontal first; PIL's one-call resize picks its own pass order, so it is
    at most 1 off on some pixels."""
    op, stored = OPS["crop"], outputs["stored"]
    ks = keys(op)
    exact = []
    for i in range(N):
        top, left, h, w = crop_reference(ks[i], 32, 32, op.scale, op.ratio)
        box = np.ascontiguousarray(stored[i, top:top + h, left:left + w])
        np.testing.assert_array_equal(outputs["crop"][i], pil_bilinear(box, (20, 24), "x"), err_msg=f"sample {i}")
        one_call = np.asarray(Image.fromarray(box).resize((20, 24), Image.BILINEAR)).astype(int)
        assert np.abs(outputs["crop"][i].astype(int) - one_call).max() <= 1
        exact.append(np.mean(outputs["crop"][i] == one_call))
    assert np.mean(exact) > 0.9


def test_new_ops_reject_bad_parameters():
    with pytest.raises(ValueError, match="kernel_size"):
        RandomGaussianBlur(kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        RandomGaussianBlur(sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="interpolation"):
        RandomResizedCrop((8, 8), interpolation="cubic")
    with pytest.raises(ValueError, match="random_order"):
        RandomColorJitter(random_order="yes")
