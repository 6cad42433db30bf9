"""Small dataset files in the real formats, made by the tests: CIFAR python archives, image folders, ImageNet layout.

CIFAR's official pickles were written by Python 2 (protocol 2): strings are byte strings (BINSTRING opcodes) and
arrays reference numpy.core.multiarray._reconstruct. `py2_pickle` writes the same opcodes from Python 3.
"""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler(pickle._Pickler):
    """Python 2's str: bytes become SHORT_BINSTRING / BINSTRING (Python 3 would call _codecs.encode)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_py2_text(self, obj: str) -> None:
        self.save_py2_str(obj.encode("latin1"))

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_text


def py2_pickle(value) -> bytes:
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(value)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_images(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 32, 32, 3) with the label readable from the pixels: the mean of the red plane."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar_batch(images: np.ndarray, labels: dict, name: str) -> bytes:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # R plane, G plane, B plane
    batch = {b"batch_label": name.encode(), b"data": np.ascontiguousarray(rows),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
    batch.update({k.encode(): list(map(int, v)) for k, v in labels.items()})
    return py2_pickle(batch)


def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def make_cifar10(path: Path, per_batch: int = 20) -> dict:
    """cifar-10-python.tar.gz with 5 training batches of `per_batch` images and a test batch; the truth."""
    truth = {"train": ([], []), "val": ([], [])}
    with tarfile.open(path, "w:gz") as archive:
        for i, (split, name) in enumerate([("train", f"data_batch_{k}") for k in range(1, 6)] + [("val", "test_batch")]):
            images, labels = cifar_images(per_batch, i), np.arange(per_batch) % 10
            add(archive, f"cifar-10-batches-py/{name}", cifar_batch(images, {"labels": labels}, name))
            truth[split][0].append(images)
            truth[split][1].append(labels)
        meta = {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
        add(archive, "cifar-10-batches-py/batches.meta", py2_pickle(meta))
        add(archive, "cifar-10-batches-py/readme.html", b"<html></html>")
    return {s: (np.concatenate(i), np.concatenate(l)) for s, (i, l) in truth.items()}


def make_cifar100(path: Path, n_train: int = 100, n_val: int = 40) -> dict:
    """cifar-100-python.tar.gz (train, test, meta with fine and coarse names); the truth."""
    truth = {}
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    with tarfile.open(path, "w:gz") as archive:
        for seed, (split, name, n) in enumerate([("train", "train", n_train), ("val", "test", n_val)]):
            images = cifar_images(n, 10 + seed)
            fine = (np.arange(n) * 7) % 100
            coarse = fine // 5
            add(archive, f"cifar-100-python/{name}",
                cifar_batch(images, {"fine_labels": fine, "coarse_labels": coarse}, name))
            truth[split] = (images, fine, coarse)
        add(archive, "cifar-100-python/meta", py2_pickle({b"fine_label_names": [n.encode() for n in fine_names],
                                                            b"coarse_label_names": [n.encode() for n in coarse_names]}))
    truth["names"] = (fine_names, coarse_names)
    return truth


FORMATS = [("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP"), ("webp", "WEBP"), ("gif", "GIF"), ("tiff", "TIFF")]


def make_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6, corrupt: bool = False,
                      seed: int = 0, suffix_case: str = "lower") -> dict:
    """root/<class>/<i>.<format>: mixed formats, sizes and modes (RGB, L, RGBA, P); one corrupt file if asked."""
    rng = np.random.default_rng(seed)
    made = {}
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, fmt = FORMATS[(i + label) % len(FORMATS)]
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            mode = ["RGB", "L", "RGBA", "P"][i % 4]
            if fmt == "JPEG" and mode in ("RGBA", "P"):
                mode = "RGB"
            image = image.convert(mode)
            suffix = ext.upper() if suffix_case == "upper" else ext
            file = root / name / f"{name}_{i}.{suffix}"
            image.save(file, format=fmt)
            made[file] = label
    if corrupt:
        bad = root / classes[-1] / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        made[bad] = None
    return made


def make_imagenet(root: Path, wnids=("n01440764", "n01443537", "n01484850"), train: int = 5, val: int = 2) -> None:
    """ILSVRC-2012 layout: train/<wnid>/<wnid>_<i>.JPEG and val/<wnid>/ILSVRC2012_val_<k>.JPEG, various sizes."""
    rng = np.random.default_rng(3)
    k = 0
    for wnid in wnids:
        for split, n in (("train", train), ("val", val)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(60, 300)), int(rng.integers(60, 300))
                k += 1
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{k:08d}.JPEG"
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / wnid / name,
                                                                                        quality=90)
