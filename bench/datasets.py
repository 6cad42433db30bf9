"""Synthetic-but-realistic JPEG datasets for the loader benchmarks, written once under bench/data/.

Images are random crops of scikit-learn's two bundled photographs (`load_sample_images`), resized to
224–288 px per side ("256 px", variable size like ImageNet) or to 32×32 ("32 px", CIFAR-like), with a
random flip and brightness, JPEG-encoded at quality 90 by FFCV's own writer. Every contender reads the
same bytes: FFCV-based loaders from the .beton, the PIL baseline from `read_jpegs` (bytes taken out of it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import DATA_DIR


@dataclass(frozen=True)
class Spec:
    """A benchmark dataset: `count` images with sides in [min_side, max_side]."""

    name: str
    count: int
    min_side: int
    max_side: int
    folder: Path = DATA_DIR

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}_{self.count}.beton"


def spec(size: int, quick: bool) -> Spec:
    """The 256 px or 32 px dataset; --quick makes them smaller."""
    if size == 256:
        return Spec("jpeg256", 256 if quick else 2048, 224, 288)
    if size == 32:
        return Spec("jpeg32", 4096 if quick else 32768, 32, 32)
    raise ValueError(f"no benchmark dataset of size {size!r}; expected 256 or 32")


class _Photos:
    """Indexable dataset of (uint8 HxWx3 image, label) made deterministically from the sample photos."""

    def __init__(self, s: Spec, seed: int = 0):
        from sklearn.datasets import load_sample_images

        self.photos = [np.asarray(img) for img in load_sample_images().images]
        self.spec = s
        self.seed = seed

    def __len__(self) -> int:
        return self.spec.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        rng = np.random.default_rng((self.seed, index))
        photo = self.photos[index % len(self.photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(self.spec.max_side, min(h, w) // 4), min(h, w) + 1))  # downscale: full detail
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out_h = int(rng.integers(self.spec.min_side, self.spec.max_side + 1))
        out_w = int(rng.integers(self.spec.min_side, self.spec.max_side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        image = np.asarray(crop.resize((out_w, out_h), Image.BILINEAR), dtype=np.float32)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = np.clip(image * rng.uniform(0.7, 1.3), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(image), index % 10


def ensure(s: Spec) -> Path:
    """Write the .beton of `s` if it is not there yet; return its path."""
    if s.path.exists():
        return s.path
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    s.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = s.path.with_suffix(".tmp")
    writer = DatasetWriter(str(tmp), {"image": RGBImageField(write_mode="jpg", jpeg_quality=90),
                                      "label": IntField()}, num_workers=2)
    writer.from_indexed_dataset(_Photos(s))
    tmp.replace(s.path)
    return s.path


def read_jpegs(path: Path) -> tuple[list[bytes], list[int]]:
    """The JPEG bytes and labels stored in an FFCV .beton, in sample order."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    table = reader.alloc_table
    size_of = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    data = np.memmap(path, dtype=np.uint8, mode="r")
    columns = dict(zip(reader.field_names, reader.metadata.dtype.names))  # metadata fields are f0, f1, ...
    image_meta, label_meta = reader.metadata[columns["image"]], reader.metadata[columns["label"]]
    if (image_meta["mode"] != 0).any():
        raise ValueError(f"{path}: some samples are stored raw, not as JPEG; delete the file to rewrite it")
    images = [bytes(data[ptr:ptr + size_of[ptr]]) for ptr in image_meta["data_ptr"].tolist()]
    labels = label_meta[label_meta.dtype.names[0]] if label_meta.dtype.names else label_meta
    return images, labels.astype(int).tolist()


def export_jpegs(s: Spec) -> Path:
    """The .beton's JPEGs as a folder of files (`<index>_<label>.jpg`), the way a PIL pipeline reads them."""
    folder = s.path.with_suffix("")
    if folder.is_dir():
        return folder
    images, labels = read_jpegs(ensure(s))  # first: ensure's temporary file has the name of the folder below
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, (jpeg, label) in enumerate(zip(images, labels)):
        (tmp / f"{i:06d}_{label}.jpg").write_bytes(jpeg)
    tmp.replace(folder)
    return folder


if __name__ == "__main__":
    import time

    for size in (256, 32):
        for quick in (True, False):
            t0 = time.perf_counter()
            p = ensure(spec(size, quick))
            print(f"{p}: {p.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")
