"""Each seeded op against a plain numpy reference (same draws from the pure-Python RNG twin), plus statistics."""
import math

import cv2
import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder

from torchstrap_runtime.data import (Loader, OrderOption, RandomColorJitter, RandomErasing, RandomGrayscale,
                                     RandomHorizontalFlip, RandomInvert, RandomResizedCrop, RandomSolarization,
                                     RandomTranslation, RandomVerticalFlip, SimpleRGBImageDecoder, write_dataset)
from torchstrap_runtime.data.random_resized_crop import sample_crop
from torchstrap_runtime.data.rng import op_key_py, randint_py, sample_key_py, uniform_py
from test_data import colour_digits

N = 600
EPOCHS = (0, 3)
# every op with non-default parameters, one output each (all decode the stored 'image' again)
OPS = {
    "hflip": RandomHorizontalFlip(p=0.3, seed=11),
    "vflip": RandomVerticalFlip(p=0.6, seed=12),
    "invert": RandomInvert(p=0.4, seed=13),
    "gray": RandomGrayscale(p=0.5, seed=14),
    "solar": RandomSolarization(p=0.7, threshold=100, seed=15),
    "shift": RandomTranslation(padding=3, fill=(10, 200, 30), p=0.8, seed=16),
    "jitter": RandomColorJitter(brightness=0.5, contrast=0.3, saturation=0.6, hue=0.2, p=0.9, seed=17),
    "erase": RandomErasing(p=0.7, scale=(0.05, 0.3), ratio=(0.5, 2.0), value=(255, 0, 128), seed=18),
    "noise": RandomErasing(p=1.0, value="random", seed=19),
}
CROP = RandomResizedCrop((24, 20), scale=(0.2, 0.9), ratio=(0.5, 2.0), seed=20)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{output name: {epoch: images in dataset order}} from one loader, plus the stored images."""
    images, labels = colour_digits(N)
    beton = write_dataset(tmp_path_factory.mktemp("ops") / "ops.beton", images, labels,
                          extra_fields={"index": np.arange(N)})
    pipelines = {"image": [SimpleRGBImageDecoder()], "label": None, "index": [IntDecoder()],
                 "crop": [CROP], **{name: [SimpleRGBImageDecoder(), op] for name, op in OPS.items()}}
    mapper = {name: "image" for name in ["crop", *OPS]}
    loader = Loader(beton, batch_size=128, num_workers=2, order=OrderOption.RANDOM, seed=0, drop_last=False,
                    pipelines=pipelines, custom_field_mapper=mapper)
    names = ["image", "index", "crop", *OPS]
    result = {name: {} for name in names}
    for epoch in EPOCHS:
        loader.set_epoch(epoch)
        batches = [[a.copy() for a in batch] for batch in loader]
        columns = {name: np.concatenate([b[i] for b in batches]) for i, name in enumerate(names)}
        order = columns.pop("index").ravel()
        assert sorted(order) == list(range(N))
        for name, values in columns.items():
            placed = np.empty_like(values)
            placed[order] = values
            result[name][epoch] = placed
    result["stored"] = images
    return result


def sample_keys(op, epoch):
    key = op_key_py(op.seed, op.stream, epoch)
    return [sample_key_py(key, i) for i in range(N)]


def applied(op, epoch):
    """Which samples draw 0 < p selects, per the pure-Python RNG."""
    return np.array([uniform_py(k, 0) < op.p for k in sample_keys(op, epoch)])


def test_decoder_returns_the_stored_pixels(outputs):
    for epoch in EPOCHS:
        np.testing.assert_array_equal(outputs["image"][epoch], outputs["stored"])


@pytest.mark.parametrize("name, flip", [("hflip", lambda x: x[:, ::-1]), ("vflip", lambda x: x[::-1]),
                                        ("invert", lambda x: 255 - x)])
def test_flips_and_invert_match_numpy(outputs, name, flip):
    op = OPS[name]
    for epoch in EPOCHS:
        chosen = applied(op, epoch)
        expected = np.stack([flip(x) if c else x for x, c in zip(outputs["stored"], chosen)])
        np.testing.assert_array_equal(outputs[name][epoch], expected)
        assert abs(chosen.mean() - op.p) < 4 * math.sqrt(op.p * (1 - op.p) / N)  # rate ~ p
    assert not np.array_equal(applied(op, EPOCHS[0]), applied(op, EPOCHS[1]))


def test_grayscale_matches_numpy_and_has_equal_channels(outputs):
    op, stored = OPS["gray"], outputs["stored"].astype(np.int64)
    luma = (299 * stored[..., 0] + 587 * stored[..., 1] + 114 * stored[..., 2] + 500) // 1000
    for epoch in EPOCHS:
        chosen, out = applied(op, epoch), outputs["gray"][epoch]
        expected = np.where(chosen[:, None, None, None], luma[..., None].repeat(3, -1), stored).astype(np.uint8)
        np.testing.assert_array_equal(out, expected)
        equal = (out[..., 0] == out[..., 1]).all(axis=(1, 2)) & (out[..., 1] == out[..., 2]).all(axis=(1, 2))
        assert equal[chosen].all() and not equal[~chosen].any()  # the stored images are colourful


def test_solarization_inverts_exactly_the_values_at_or_above_the_threshold(outputs):
    op, stored = OPS["solar"], outputs["stored"]
    for epoch in EPOCHS:
        chosen, out = applied(op, epoch), outputs["solar"][epoch]
        high = stored >= op.threshold
        np.testing.assert_array_equal(out[chosen][high[chosen]], 255 - stored[chosen][high[chosen]])
        np.testing.assert_array_equal(out[chosen][~high[chosen]], stored[chosen][~high[chosen]])
        np.testing.assert_array_equal(out[~chosen], stored[~chosen])


def test_translation_matches_numpy(outputs):
    op, stored = OPS["shift"], outputs["stored"]
    pad = op.padding
    for epoch in EPOCHS:
        shifts = set()
        for i, k in enumerate(sample_keys(op, epoch)):
            dy, dx = (randint_py(k, 1, -pad, pad), randint_py(k, 2, -pad, pad)) if uniform_py(k, 0) < op.p else (0, 0)
            shifts.add((dy, dx))
            padded = np.empty((32 + 2 * pad, 32 + 2 * pad, 3), np.uint8)
            padded[:] = op.fill
            padded[pad:pad + 32, pad:pad + 32] = stored[i]
            expected = padded[pad + dy:pad + dy + 32, pad + dx:pad + dx + 32]
            np.testing.assert_array_equal(outputs["shift"][epoch][i], expected, err_msg=f"sample {i} shift {dy, dx}")
        assert len(shifts) == (2 * pad + 1) ** 2  # every shift occurs


def erase_reference(image, k, op):
    out = image.copy()
    if uniform_py(k, 0) >= op.p:
        return out
    h, w = image.shape[:2]
    for attempt in range(10):
        d = 1 + 4 * attempt
        area = h * w * (op.scale[0] + (op.scale[1] - op.scale[0]) * uniform_py(k, d))
        log_lo, log_hi = math.log(op.ratio[0]), math.log(op.ratio[1])
        aspect = math.exp(log_lo + (log_hi - log_lo) * uniform_py(k, d + 1))
        eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < eh < h and 0 < ew < w:
            top, left = randint_py(k, d + 2, 0, h - eh), randint_py(k, d + 3, 0, w - ew)
            if op.value == "random":
                draws = [64 + (y * w + x) * 3 + c for y in range(top, top + eh) for x in range(left, left + ew)
                         for c in range(3)]
                noise = [int(uniform_py(k, dr) * 256) for dr in draws]
                out[top:top + eh, left:left + ew] = np.array(noise, np.uint8).reshape(eh, ew, 3)
            else:
                out[top:top + eh, left:left + ew] = op.value
            break
    return out


@pytest.mark.parametrize("name", ["erase", "noise"])
def test_erasing_matches_numpy(outputs, name):
    op, stored = OPS[name], outputs["stored"]
    for epoch in EPOCHS:
        keys = sample_keys(op, epoch)
        for i in range(0, N, 7 if name == "noise" else 1):
            np.testing.assert_array_equal(outputs[name][epoch][i], erase_reference(stored[i], keys[i], op),
                                          err_msg=f"sample {i}")
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(outputs[name][0], stored)])
    assert abs(changed - op.p) < 0.08


def jitter_reference(image, k, op):
    if uniform_py(k, 0) >= op.p:
        return image
    lo = lambda m: max(0.0, 1 - m)
    bf = lo(op.brightness) + (1 + op.brightness - lo(op.brightness)) * uniform_py(k, 1)
    cf = lo(op.contrast) + (1 + op.contrast - lo(op.contrast)) * uniform_py(k, 2)
    sf = lo(op.saturation) + (1 + op.saturation - lo(op.saturation)) * uniform_py(k, 3)
    hf = -op.hue + 2 * op.hue * uniform_py(k, 4)
    x = np.clip(image.astype(np.float64) * bf, 0, 255)
    luma = lambda v: 0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2]
    x = np.clip(cf * x + (1 - cf) * luma(x).mean(), 0, 255)
    x = np.clip(sf * x + (1 - sf) * luma(x)[..., None], 0, 255)
    hsv = cv2.cvtColor((x / 255).astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees
    hsv[..., 0] = (hsv[..., 0] + 360 * hf) % 360
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float64) * 255
    return np.floor(x + 0.5).clip(0, 255).astype(np.uint8)


def test_color_jitter_matches_numpy(outputs):
    op, stored = OPS["jitter"], outputs["stored"]
    keys = sample_keys(op, 0)
    exact = []
    for i in range(N):
        out, ref = outputs["jitter"][0][i].astype(int), jitter_reference(stored[i], keys[i], op).astype(int)
        assert np.abs(out - ref).max() <= 1, f"sample {i}"  # float32 HSV in the reference: off by one at most
        exact.append(np.mean(out == ref))
    assert np.mean(exact) > 0.98
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(outputs["jitter"][0], stored)])
    assert abs(changed - op.p) < 0.06


def crop_reference(k, height, width, scale, ratio):
    """torchvision's RandomResizedCrop.get_params on our draws."""
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        d = 4 * attempt
        area = height * width * (scale[0] + (scale[1] - scale[0]) * uniform_py(k, d))
        aspect = math.exp(log_lo + (log_hi - log_lo) * uniform_py(k, d + 1))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return randint_py(k, d + 2, 0, height - h), randint_py(k, d + 3, 0, width - w), h, w
    raise AssertionError("the tests' parameters always fit within 10 attempts")


def test_random_resized_crop_matches_opencv_area_resize(outputs):
    stored = outputs["stored"]
    for epoch in EPOCHS:
        keys = sample_keys(CROP, epoch)
        for i in range(N):
            top, left, h, w = crop_reference(keys[i], 32, 32, CROP.scale, CROP.ratio)
            expected = cv2.resize(np.ascontiguousarray(stored[i, top:top + h, left:left + w]), (20, 24),
                                  interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(outputs["crop"][epoch][i], expected, err_msg=f"sample {i}")


def test_random_resized_crop_statistics():
    """Area and aspect stay in scale/ratio (up to pixel rounding), crops are not square, positions cover the image."""
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    key = op_key_py(5, RandomResizedCrop.stream, 0)
    boxes = np.array([sample_crop(np.uint64(sample_key_py(key, i)), 224, 224, scale[0], scale[1],
                                  math.log(ratio[0]), math.log(ratio[1])) for i in range(5000)])
    top, left, h, w = boxes.T
    area, aspect = h * w / 224 ** 2, w / h
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 224).all() and (left + w <= 224).all()
    assert area.min() >= scale[0] * 0.95 and area.max() <= 1.0
    assert aspect.min() >= ratio[0] * 0.97 and aspect.max() <= ratio[1] * 1.03
    assert np.mean(h == w) < 0.05, "crops must not be forced square"
    assert (aspect < 0.9).mean() > 0.2 and (aspect > 1.1).mean() > 0.2
    assert abs(np.log(aspect).mean()) < 0.02  # log-uniform around 1
    assert 0.45 < area.mean() < 0.6  # uniform in [0.08, 1] (a bit less: big crops with extreme aspect do not fit)
    for k_col in (top, left):
        assert len(np.unique(k_col)) > 100
    # numba kernel == Python reference
    for i in range(200):
        k = sample_key_py(key, i)
        assert tuple(boxes[i]) == crop_reference(k, 224, 224, scale, ratio)


def test_ops_reject_bad_parameters():
    with pytest.raises(ValueError, match="p must be in"):
        RandomHorizontalFlip(p=1.5)
    with pytest.raises(ValueError, match="seed"):
        RandomGrayscale(seed="abc")
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop((32, 32), scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="fill"):
        RandomTranslation(fill=(0, 0))
    with pytest.raises(ValueError, match="hue"):
        RandomColorJitter(hue=0.7)
    with pytest.raises(ValueError, match="value"):
        RandomErasing(value="noise")
    with pytest.raises(ValueError, match="threshold"):
        RandomSolarization(threshold=300)
