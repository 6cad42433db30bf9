"""Dataset writers and .beton validation, on real files (numpy arrays, PNG/JPEG folders, scikit-learn digits)."""
import os

import numpy as np
import pytest
from ffcv.fields.basics import FloatDecoder, IntDecoder
from ffcv.fields.ndarray import NDArrayDecoder
from PIL import Image

from torchstrap_runtime.data import (Loader, OrderOption, RandomResizedCrop, SimpleRGBImageDecoder, beton_info,
                                     check_beton, write_dataset, write_digits, write_image_folder)


def read_all(path, pipelines):
    loader = Loader(path, batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines=pipelines)
    batches = [[np.array(x) for x in batch] for batch in loader]
    return [np.concatenate(column) for column in zip(*batches)]


def test_write_dataset_round_trip_with_extra_fields(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 40)
    extra = {"weight": rng.random(40), "rank": np.arange(40) * 3, "embedding": rng.random((40, 4)).astype(np.float32)}
    path = write_dataset(tmp_path / "arrays.beton", images, labels, extra_fields=extra)
    assert beton_info(path) == (40, ["image", "label", "weight", "rank", "embedding"])
    image, label, weight, rank, embedding = read_all(path, {
        "image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "weight": [FloatDecoder()],
        "rank": [IntDecoder()], "embedding": [NDArrayDecoder()]})
    np.testing.assert_array_equal(image, images)
    np.testing.assert_array_equal(label.ravel(), labels)
    np.testing.assert_array_equal(weight.ravel(), extra["weight"])
    np.testing.assert_array_equal(rank.ravel(), extra["rank"])
    np.testing.assert_array_equal(embedding, extra["embedding"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # temporary file renamed


def test_write_dataset_accepts_grayscale_and_rejects_bad_arrays(tmp_path):
    gray = np.arange(5 * 6 * 7, dtype=np.uint8).reshape(5, 6, 7)
    path = write_dataset(tmp_path / "gray.beton", gray, np.zeros(5, int))
    (image,) = read_all(path, {"image": [SimpleRGBImageDecoder()], "label": None})
    np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=3))
    with pytest.raises(ValueError, match="uint8"):
        write_dataset(tmp_path / "x.beton", gray.astype(np.float32), np.zeros(5, int))
    with pytest.raises(ValueError, match="labels"):
        write_dataset(tmp_path / "x.beton", gray, np.zeros(5))
    with pytest.raises(ValueError, match="'extra' has 3 samples"):
        write_dataset(tmp_path / "x.beton", gray, np.zeros(5, int), extra_fields={"extra": np.zeros(3)})


def make_folder(root, sizes=((20, 24), (16, 16), (30, 22))):
    rng = np.random.default_rng(1)
    arrays = {}
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{i}.png")
            arrays[(label, i)] = array
    return arrays


def test_write_image_folder_raw_is_exact_and_jpeg_decodes(tmp_path):
    arrays = make_folder(tmp_path / "src", sizes=((20, 24), (20, 24)))
    raw = write_image_folder(tmp_path / "src", tmp_path / "raw.beton", write_mode="raw")
    image, label = read_all(raw, {"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    np.testing.assert_array_equal(label.ravel(), [0, 0, 1, 1])  # sorted class folders
    np.testing.assert_array_equal(image, np.stack([arrays[(0, 0)], arrays[(0, 1)], arrays[(1, 0)], arrays[(1, 1)]]))
    make_folder(tmp_path / "mixed")  # different sizes, JPEG: the RandomResizedCrop decoder handles both
    jpeg = write_image_folder(tmp_path / "mixed", tmp_path / "jpeg.beton", write_mode="jpg")
    (crops,) = read_all(jpeg, {"image": [RandomResizedCrop((8, 8), seed=0)], "label": None})
    assert crops.shape == (6, 8, 8, 3) and crops.std() > 20  # decoded noise, not zeros


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_image_folder(tmp_path / "nowhere", tmp_path / "x.beton")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        write_image_folder(tmp_path / "empty", tmp_path / "x.beton")
    (tmp_path / "noimages" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        write_image_folder(tmp_path / "noimages", tmp_path / "x.beton")
    make_folder(tmp_path / "broken")
    (tmp_path / "broken" / "dog" / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="bad.png"):
        write_image_folder(tmp_path / "broken", tmp_path / "broken.beton")
    assert not (tmp_path / "broken.beton").exists()


def test_check_beton_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.beton"):
        check_beton(tmp_path / "missing.beton")
    good = write_dataset(tmp_path / "good.beton", np.zeros((8, 4, 4, 3), np.uint8), np.arange(8))
    assert check_beton(good) == good
    data = good.read_bytes()
    for name, content in [("empty", b""), ("garbage", os.urandom(5000)), ("truncated", data[:len(data) // 2]),
                          ("cut_end", data[:-10])]:
        bad = tmp_path / f"{name}.beton"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}.beton"):
            check_beton(bad)
    with pytest.raises(ValueError, match="is not a file"):
        check_beton(tmp_path)


def test_write_digits_is_deterministic_stratified_and_skips_valid_files(tmp_path):
    paths = write_digits(tmp_path / "a")
    assert beton_info(paths["train"]) == (1437, ["image", "label"])
    assert beton_info(paths["val"]) == (360, ["image", "label"])
    image, label = read_all(paths["val"], {"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    assert image.shape == (360, 32, 32, 3) and image.max() == 255 and image.min() == 0
    assert np.array_equal(image[..., 0], image[..., 2])  # gray digits in RGB
    counts = np.bincount(label.ravel(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 10 % of each class
    again = write_digits(tmp_path / "b")
    assert paths["train"].read_bytes() == again["train"].read_bytes()
    mtime = paths["train"].stat().st_mtime_ns
    assert write_digits(tmp_path / "a") == paths and paths["train"].stat().st_mtime_ns == mtime  # skipped
    paths["val"].write_bytes(b"corrupt")
    write_digits(tmp_path / "a")
    assert beton_info(paths["val"])[0] == 360  # rewritten
