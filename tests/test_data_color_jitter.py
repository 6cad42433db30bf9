"""RandomColorJitter's kernel against the per-pixel HSV kernel it replaced (color_jitter_reference.py, whose
formulas are torchvision's; test_data_ops*.py check it against numpy/OpenCV): on photos and noise, fixed and
random order, many factors, at most one level apart, and the draws unchanged."""
import numpy as np
import pytest
from color_jitter_reference import per_pixel_color_jitter_kernel

from torchstrap_runtime.data.color_jitter import RandomColorJitter, color_jitter_kernel
from torchstrap_runtime.data.rng import op_key_py


def photo_crops(count, size, seed):
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
        out[i] = photo[top:top + size, left:left + size]
    return out


def special_images(count, size, seed):
    """Noise, with grey pixels, ties between channels, black and white: the HSV branches' edge cases."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    images[:, :4, :, 1] = images[:, :4, :, 0]  # r == g
    images[:, 4:8, :, 2] = images[:, 4:8, :, 1]  # g == b
    images[:, 8:12, :, :] = images[:, 8:12, :, :1]  # grey
    images[:, 12:14] = 0
    images[:, 14:16] = 255
    images[:, 16:18, :, 0] = 255  # red at the top of the range: clipping then hue
    return images


def compare(images, params, key):
    indices = np.arange(len(images))
    new = color_jitter_kernel(images.copy(), None, indices, key, params).astype(int)
    old = per_pixel_color_jitter_kernel(images.copy(), None, indices, key, params).astype(int)
    return np.abs(new - old)


PARAMS = [  # brightness, contrast, saturation, hue magnitudes
    (0.4, 0.4, 0.2, 0.1), (0.8, 0.8, 0.8, 0.2), (0.0, 0.9, 0.0, 0.5), (1.0, 0.0, 1.0, 0.0), (2.0, 2.0, 2.0, 0.5),
]


@pytest.mark.parametrize("random_order", [False, True])
@pytest.mark.parametrize("magnitudes", PARAMS)
def test_kernel_matches_per_pixel_kernel(magnitudes, random_order):
    op = RandomColorJitter(*magnitudes, p=0.9, seed=5, random_order=random_order)
    params = op.params()
    diffs = []
    for seed, images in enumerate((photo_crops(12, 64, 0), special_images(12, 32, 1))):
        for epoch in range(3):
            diff = compare(images, params, np.uint64(op_key_py(seed, op.stream, epoch)))
            assert diff.max() <= 1, f"{magnitudes} random_order={random_order}: {diff.max()} levels apart"
            diffs.append(diff.ravel())
    assert np.mean(np.concatenate(diffs) > 0) < 1e-4  # off by one only where a value sits on a rounding edge


def test_unchanged_samples_and_draws():
    """p decides per sample as before; the factors and the order come from the same draws (same output on
    random order's identity permutation as the fixed order is implied by the kernel comparison above)."""
    images = photo_crops(40, 32, 2)
    params = RandomColorJitter(0.4, 0.4, 0.4, 0.1, p=0.5, seed=0, random_order=True).params()
    key = np.uint64(op_key_py(3, RandomColorJitter.stream, 0))
    new = color_jitter_kernel(images.copy(), None, np.arange(40), key, params)
    old = per_pixel_color_jitter_kernel(images.copy(), None, np.arange(40), key, params)
    same_as_input = [np.array_equal(a, b) for a, b in zip(new, images)]
    assert same_as_input == [np.array_equal(a, b) for a, b in zip(old, images)]
    assert 8 < sum(same_as_input) < 32


def test_non_square_and_single_pixel_images():
    params = RandomColorJitter(0.5, 0.5, 0.5, 0.3, p=1.0, seed=0, random_order=True).params()
    for shape in ((5, 37, 3), (1, 1, 3), (3, 1, 3)):
        images = np.random.default_rng(0).integers(0, 256, (8, *shape), dtype=np.uint8)
        assert compare(images, params, np.uint64(7)).max() <= 1


def test_batch_that_is_not_contiguous():
    """A batch viewed out of a larger array (channels 0-2 of RGBA) is jittered in place, as a contiguous one."""
    params = RandomColorJitter(0.5, 0.5, 0.5, 0.3, p=1.0, seed=0, random_order=True).params()
    rgba = np.random.default_rng(1).integers(0, 256, (6, 20, 30, 4), dtype=np.uint8)
    alpha = rgba[..., 3].copy()
    view, copy = rgba[..., :3], rgba[..., :3].copy()
    color_jitter_kernel(view, None, np.arange(6), np.uint64(3), params)
    color_jitter_kernel(copy, None, np.arange(6), np.uint64(3), params)
    np.testing.assert_array_equal(view, copy)
    np.testing.assert_array_equal(rgba[..., 3], alpha)
    assert not np.array_equal(copy, np.random.default_rng(1).integers(0, 256, (6, 20, 30, 4), dtype=np.uint8)[..., :3])
