"""The native kernels (`_kernels.cpp` via `data/native.py`): partial JPEG decode, area resize, flips; and the
Loader's batch buffers reused across epochs. References: FFCV's own full decode and OpenCV's resize."""
import io
import time

import cv2
import numpy as np
import pytest
from ffcv.fields.basics import IntDecoder
from ffcv.libffcv import imdecode
from numba import njit
from PIL import Image

from torchstrap_runtime.data import Loader, OrderOption, RandomHorizontalFlip, RandomResizedCrop, write_dataset
from torchstrap_runtime.data.image_kernels import flip_image, solarize_image
from torchstrap_runtime.data.native import jpeg_crop_resize, resize_area
from torchstrap_runtime.data.rng import op_key_py, sample_key_py

from test_data_ops import crop_reference


@njit
def crop_resize_jpeg(jpeg, top, left, height, width, scratch, out):
    return jpeg_crop_resize(jpeg.ctypes.data, jpeg.size, top, left, height, width, scratch.ctypes.data,
                            scratch.size, out.ctypes.data, out.shape[0], out.shape[1])


@njit
def resize_raw(image, top, left, height, width, out):
    return resize_area(image.ctypes.data, image.shape[0], image.shape[1], top, left, height, width,
                       out.ctypes.data, out.shape[0], out.shape[1])


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colour image with texture (JPEG-like content: chroma edges everywhere)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [np.sin(x / rng.uniform(3, 9) + c) * np.cos(y / rng.uniform(3, 9) - c) for c in range(3)]
    image = (np.stack(channels, -1) * 100 + 128 + rng.normal(0, 12, (height, width, 3)))
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, subsampling: int, progressive: bool = False) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90, subsampling=subsampling, progressive=progressive)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def full_decode(jpeg: np.ndarray, height: int, width: int) -> np.ndarray:
    """FFCV's decode of the whole image (TurboJPEG, fast DCT): what the crop decode must reproduce."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    assert imdecode(jpeg, out, height, width, height, width, 0, 0, 1, 1, False, False) == 0
    return out


def boxes(height: int, width: int, rng: np.random.Generator, count: int):
    """Random boxes plus the ones touching each border and the whole image."""
    yield 0, 0, height, width
    yield 0, 0, 1, 1
    yield height - 1, width - 1, 1, 1
    yield 0, width - 17, height, 17
    yield height - 16, 16, 16, width - 32
    for _ in range(count):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        yield int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


@pytest.mark.parametrize("subsampling,progressive", [(2, False), (1, False), (0, False), (2, True)],
                         ids=["4:2:0", "4:2:2", "4:4:4", "4:2:0-progressive"])
def test_crop_decode_gives_the_pixels_of_a_full_decode(subsampling, progressive):
    rng = np.random.default_rng(subsampling)
    for height, width in [(61, 75), (96, 128), (17, 250)]:
        jpeg = encode(photo(height, width, height), subsampling, progressive)
        full = full_decode(jpeg, height, width)
        scratch = np.empty(height * width * 3, dtype=np.uint8)
        for top, left, h, w in boxes(height, width, rng, 60):
            out = np.empty((h, w, 3), dtype=np.uint8)  # same size: the resize is a copy
            assert crop_resize_jpeg(jpeg, top, left, h, w, scratch, out) == 0
            np.testing.assert_array_equal(out, full[top:top + h, left:left + w], err_msg=f"box {top, left, h, w}")


def test_crop_resize_matches_opencv_area_resize_of_the_full_image():
    rng = np.random.default_rng(1)
    height, width = 150, 130
    image = photo(height, width, 3)
    jpeg = encode(image, 2)
    full = full_decode(jpeg, height, width)
    scratch = np.empty(height * width * 3, dtype=np.uint8)
    for top, left, h, w in boxes(height, width, rng, 40):
        expected = cv2.resize(np.ascontiguousarray(full[top:top + h, left:left + w]), (40, 48),
                              interpolation=cv2.INTER_AREA)
        out = np.empty((48, 40, 3), dtype=np.uint8)
        assert crop_resize_jpeg(jpeg, top, left, h, w, scratch, out) == 0
        np.testing.assert_array_equal(out, expected)
        out[:] = 0
        assert resize_raw(image, top, left, h, w, out) == 0
        np.testing.assert_array_equal(out, cv2.resize(np.ascontiguousarray(image[top:top + h, left:left + w]),
                                                      (40, 48), interpolation=cv2.INTER_AREA))


def test_crop_decode_reports_errors_instead_of_exiting():
    jpeg = encode(photo(40, 40, 0), 2)
    scratch, out = np.empty(40 * 40 * 3, dtype=np.uint8), np.empty((8, 8, 3), dtype=np.uint8)
    assert crop_resize_jpeg(jpeg, 30, 0, 20, 10, scratch, out) == -2  # box below the image
    assert crop_resize_jpeg(jpeg, 0, 0, 40, 40, scratch[:100], out) == -3  # scratch too small
    broken = jpeg.copy()
    broken[:2] = 0  # no JPEG start marker
    assert crop_resize_jpeg(broken, 0, 0, 10, 10, scratch, out) == -1
    assert crop_resize_jpeg(jpeg[:20].copy(), 0, 0, 10, 10, scratch, out) == -1  # truncated header
    assert crop_resize_jpeg(jpeg, 0, 0, 10, 10, scratch, out) == 0  # the thread's decoder still works


def test_flip_image_any_layout():
    image = photo(9, 14, 5)
    for view in (image, image[:, ::2], image[::-1], np.asfortranarray(image)):
        for flip, expected in ((0, view), (1, view[:, ::-1]), (2, view[::-1])):
            out = np.zeros_like(np.ascontiguousarray(view))
            flip_image(view, out, flip)
            np.testing.assert_array_equal(out, expected)
            strided_out = np.zeros((view.shape[0], view.shape[1] * 2, 3), dtype=np.uint8)[:, ::2]
            flip_image(view, strided_out, flip)
            np.testing.assert_array_equal(strided_out, expected)


@njit
def solarize_in_numba(image, threshold):
    solarize_image(image, threshold)


def test_solarize_image_any_layout():
    """The flat loop (C-contiguous) and the strided one give numpy's result; 0 inverts all, 256 nothing."""
    for threshold in (0, 100, 255, 256):
        for layout in ("C", "strided", "fortran"):
            image = photo(9, 14, threshold)
            view = {"C": image, "strided": image[:, ::2], "fortran": np.asfortranarray(image)}[layout]
            expected = np.where(view >= threshold, 255 - view, view).astype(np.uint8)
            solarize_in_numba(view, threshold)
            np.testing.assert_array_equal(view, expected, err_msg=f"{layout}, threshold {threshold}")


# ---------------------------------------------------------------------- through the Loader
N = 40
CROP = RandomResizedCrop((24, 28), scale=(0.1, 1.0), seed=3)


@pytest.fixture(scope="module")
def jpeg_beton(tmp_path_factory):
    images = np.stack([photo(61, 75, i) for i in range(N)])
    path = write_dataset(tmp_path_factory.mktemp("native") / "jpeg.beton", images, np.arange(N) % 7,
                         extra_fields={"index": np.arange(N)}, write_mode="jpg")
    return path


def stored_jpegs(path):
    """The JPEG bytes of each sample, read back with FFCV's reader (what the loaders decode)."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    data = np.fromfile(str(path), dtype=np.uint8)
    meta = reader.metadata["f0"]
    allocations = reader.alloc_table
    result = []
    for i in range(N):
        ptr = meta["data_ptr"][i]
        size = allocations["size"][allocations["ptr"] == ptr][0]
        result.append(data[ptr:ptr + size])
    return result


@pytest.mark.parametrize("os_cache", [True, False], ids=["memory-mapped", "process-cache"])
def test_loader_random_resized_crop_on_jpeg_matches_full_decode_reference(jpeg_beton, os_cache):
    loader = Loader(jpeg_beton, batch_size=16, num_workers=2, order=OrderOption.RANDOM, seed=0, drop_last=False,
                    os_cache=os_cache, pipelines={"image": [CROP], "label": None, "index": [IntDecoder()]})
    jpegs = stored_jpegs(jpeg_beton)
    for epoch in (0, 1):
        key = op_key_py(loader.op_seeds[id(CROP)], RandomResizedCrop.stream, epoch)
        for images, indices in loader:
            for image, index in zip(images, indices.ravel()):
                k = sample_key_py(key, int(index))
                top, left, h, w = crop_reference(k, 61, 75, CROP.scale, CROP.ratio)
                full = full_decode(jpegs[index], 61, 75)
                expected = cv2.resize(np.ascontiguousarray(full[top:top + h, left:left + w]), (28, 24),
                                      interpolation=cv2.INTER_AREA)
                np.testing.assert_array_equal(image, expected, err_msg=f"epoch {epoch} sample {index}")


def test_loader_names_the_sample_of_a_corrupt_jpeg(jpeg_beton, tmp_path):
    broken = tmp_path / "broken.beton"
    data = np.fromfile(str(jpeg_beton), dtype=np.uint8)
    from ffcv.reader import Reader

    ptr = Reader(str(jpeg_beton)).metadata["f0"]["data_ptr"][13]
    data[ptr:ptr + 2] = 0  # sample 13 loses its JPEG start marker
    data.tofile(str(broken))
    loader = Loader(broken, batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [CROP], "label": None, "index": None})
    with pytest.raises(RuntimeError, match=r"RandomResizedCrop.*13"):
        for _ in loader:
            pass


def test_batch_buffers_are_reused_across_epochs_without_overwriting_the_last_batch(jpeg_beton):
    def make():
        return Loader(jpeg_beton, batch_size=6, num_workers=2, order=OrderOption.RANDOM, seed=4, drop_last=False,
                      pipelines={"image": [CROP, RandomHorizontalFlip(seed=5)], "label": None,
                                 "index": [IntDecoder()]})

    loader = make()
    epochs, allocations = [], None
    for epoch in range(3):
        running = iter(loader)  # 7 batches on 5 slots: an epoch ends one slot after where it started
        assert allocations is None or loader.buffers[1] is allocations, "a finished epoch's buffers are reused"
        allocations = loader.buffers[1]
        batches = []
        for batch in running:
            batches.append([np.array(x) for x in batch])
            last = batch[0]  # a view of the last batch's slot
        epochs.append(batches)
        last_copy = np.array(last)
        following = iter(loader)  # the next epoch's producer fills its queue ahead...
        time.sleep(0.5)
        assert np.array_equal(last, last_copy), "...without touching the batch the consumer still holds"
        following.close()
        while following.is_alive():
            time.sleep(0.05)
        loader.set_epoch(epoch + 1)
    for epoch, batches in enumerate(epochs):  # the same batches as fresh loaders give (fresh buffers)
        fresh = make()
        fresh.set_epoch(epoch)
        for got, want in zip(batches, fresh, strict=True):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)


def test_an_unfinished_epoch_keeps_its_buffers(jpeg_beton):
    loader = Loader(jpeg_beton, batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [CROP], "label": None, "index": None})
    running = iter(loader)
    held = next(running)[0]
    held_copy = np.array(held)
    allocations = loader.buffers[1]
    assert running.is_alive()
    list(loader)  # another epoch while the first one's producer is still running
    assert loader.buffers[1] is not allocations
    np.testing.assert_array_equal(held, held_copy)
    running.close()
