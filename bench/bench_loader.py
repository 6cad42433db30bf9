"""Loader throughput, steady state: torchstrap's seeded pipeline vs upstream FFCV vs a PIL DataLoader.

Same .beton / same JPEG bytes, same augmentations, 2 workers, random order, uint8 NCHW batches out:
  256 px (224–288 px JPEGs): RandomResizedCrop to 224 + horizontal flip, batch 64
  32 px (32×32 JPEGs):       decode + horizontal flip, batch 256
plus the decode ceiling: libjpeg-turbo (FFCV's own `imdecode`, fast DCT) over the same bytes from
memory, one core, no augmentation; ×2 gives the 2-core ceiling each loader is reported against.
At 256 px also `os_cache=False` (datasets larger than RAM: pages read into the process, QUASI_RANDOM order),
ours against ours with `os_cache=True` and against upstream FFCV's QUASI_RANDOM with `os_cache=False`.

One round = one full epoch per contender (loaders built and warmed up once, outside the timing).

    python bench/bench_loader.py [--quick] [--rounds N] [--size 256 32]
"""
from __future__ import annotations

import functools
import io
import subprocess
import sys
import time
from typing import Callable, Iterable

import numpy as np
import torch

import datasets
from common import Summary, interleave, parser, print_table, write_results

WORKERS = 2
CROP = 224
BATCH = {256: 64, 32: 256}


# ---------------------------------------------------------------- PIL DataLoader (the fair baseline)
class PILDataset(torch.utils.data.Dataset):
    """JPEG bytes -> PIL decode -> (RandomResizedCrop(224) if crop) -> random flip -> uint8 HWC array."""

    def __init__(self, jpegs: list[bytes], labels: list[int], crop: int | None):
        self.jpegs, self.labels, self.crop = jpegs, labels, crop

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        image = Image.open(io.BytesIO(self.read(index))).convert("RGB")
        if self.crop is not None:
            top, left, h, w = random_crop_box(image.height, image.width)
            image = image.resize((self.crop, self.crop), Image.BILINEAR, box=(left, top, left + w, top + h))
        if np.random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(image), self.labels[index]

    def read(self, index: int) -> bytes:
        return self.jpegs[index]


class PILFolder(PILDataset):
    """The same, reading each JPEG from its own file (`<index>_<label>.jpg`) like an ImageFolder."""

    def __init__(self, folder: str, crop: int | None):
        from pathlib import Path

        self.files = sorted(Path(folder).glob("*.jpg"))
        super().__init__([], [int(f.stem.split("_")[1]) for f in self.files], crop)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> bytes:
        return self.files[index].read_bytes()


def random_crop_box(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w), written with numpy (same as FFCV's)."""
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * np.random.uniform(*scale)
        aspect = np.exp(np.random.uniform(*log_ratio))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(np.random.randint(0, height - h + 1)), int(np.random.randint(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def collate_nchw(batch: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack HWC uint8 images into an NCHW (channels_last) uint8 tensor, like FFCV's ToTorchImage."""
    images = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2)
    return images, torch.tensor([b[1] for b in batch])


def worker_seed(worker_id: int) -> None:
    """Give each DataLoader worker its own numpy stream (the PIL augmentations draw from numpy)."""
    np.random.seed(torch.initial_seed() % 2**32)


def pil_loader(spec: datasets.Spec, from_files: bool = False) -> Iterable:
    """torch DataLoader over the .beton's JPEG bytes (in memory, or one file each), 2 persistent workers."""
    crop = CROP if spec.max_side > CROP else None
    if from_files:
        dataset = PILFolder(str(spec.path.with_suffix("")), crop)
    else:
        dataset = PILDataset(*datasets.read_jpegs(spec.path), crop)
    return torch.utils.data.DataLoader(
        dataset, batch_size=BATCH[size_of(spec)], shuffle=True, num_workers=WORKERS, collate_fn=collate_nchw,
        persistent_workers=True, drop_last=True, worker_init_fn=worker_seed, prefetch_factor=4)


# ---------------------------------------------------------------- upstream FFCV (unseeded ops)
def ffcv_loader(spec: datasets.Spec, os_cache: bool = True) -> Iterable:
    """ffcv.loader.Loader with the same pipeline built from upstream FFCV ops (os_cache off: QUASI_RANDOM)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    if spec.max_side > CROP:
        decoder = RandomResizedCropRGBImageDecoder((CROP, CROP))
    else:
        decoder = SimpleRGBImageDecoder()
    pipelines = {"image": [decoder, RandomHorizontalFlip(), ToTensor(), ToTorchImage()],
                 "label": [IntDecoder(), ToTensor()]}
    return Loader(str(spec.path), batch_size=BATCH[size_of(spec)], num_workers=WORKERS, os_cache=os_cache,
                  order=OrderOption.RANDOM if os_cache else OrderOption.QUASI_RANDOM, pipelines=pipelines,
                  drop_last=True, seed=None if os_cache else 0)


# ---------------------------------------------------------------- torchstrap seeded pipeline
def torchstrap_loader(spec: datasets.Spec, os_cache: bool = True) -> Iterable:
    """torchstrap_runtime.data.Loader with the seeded ops (every op and the order seeded; os_cache off:
    QUASI_RANDOM, as the template picks)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import ToTensor, ToTorchImage

    from torchstrap_runtime import data as ts

    if spec.max_side > CROP:
        decoder = ts.RandomResizedCrop((CROP, CROP), seed=1)
    else:
        decoder = ts.SimpleRGBImageDecoder() if hasattr(ts, "SimpleRGBImageDecoder") else _simple_decoder()
    pipelines = {"image": [decoder, ts.RandomHorizontalFlip(seed=2), ToTensor(), ToTorchImage()],
                 "label": [IntDecoder(), ToTensor()]}
    order = ts.OrderOption.RANDOM if os_cache else ts.OrderOption.QUASI_RANDOM
    return ts.Loader(str(spec.path), batch_size=BATCH[size_of(spec)], num_workers=WORKERS, os_cache=os_cache,
                     order=order, pipelines=pipelines, seed=0, drop_last=True)


def _simple_decoder():
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder

    return SimpleRGBImageDecoder()


# ---------------------------------------------------------------- decode ceiling
def decode_ceiling(spec: datasets.Spec) -> Callable[[], float]:
    """A function decoding every JPEG once on one core (libjpeg-turbo through FFCV's imdecode); returns img/s."""
    from ffcv.fields.rgb_image import RGBImageField  # noqa: F401  (loads libffcv the way FFCV does)
    from ffcv.libffcv import ctypes_imdecode
    from numba import njit
    from PIL import Image

    jpegs, _ = datasets.read_jpegs(spec.path)
    sizes = np.array([len(j) for j in jpegs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    blob = np.frombuffer(b"".join(jpegs), dtype=np.uint8).copy()
    shapes = np.array([Image.open(io.BytesIO(j)).size[::-1] for j in jpegs], dtype=np.int64)  # (h, w)
    out = np.empty(int(shapes[:, 0].max() * shapes[:, 1].max() * 3), dtype=np.uint8)

    @njit(nogil=True)
    def decode_all(blob, offsets, sizes, shapes, out):
        failures = 0
        for i in range(len(offsets)):
            src = blob[offsets[i]:offsets[i] + sizes[i]]
            h, w = shapes[i, 0], shapes[i, 1]
            failures += ctypes_imdecode(src.ctypes.data, src.size, h, w, out.ctypes.data, h, w, 0, 0, 1, 1,
                                        False, False) != 0
        return failures

    def run() -> float:
        t0 = time.perf_counter()
        failures = decode_all(blob, offsets, sizes, shapes, out)
        rate = len(offsets) / (time.perf_counter() - t0)
        if failures:
            raise RuntimeError(f"libjpeg-turbo failed on {failures} of {len(offsets)} images of {spec.path}")
        return rate

    run()  # compile, and check every image decodes

    return run


# ---------------------------------------------------------------- measuring
def size_of(spec: datasets.Spec) -> int:
    return 256 if spec.max_side > 32 else 32


def epoch_rate(loader: Iterable) -> Callable[[], float]:
    """A function iterating one epoch of `loader`; returns images per second."""

    def run() -> float:
        n = 0
        t0 = time.perf_counter()
        for images, _labels in loader:
            n += images.shape[0]
        return n / (time.perf_counter() - t0)

    return run


def check_batch(name: str, loader: Iterable, spec: datasets.Spec) -> None:
    """Fail loudly if a contender does not deliver uint8 NCHW batches of the expected shape."""
    images, labels = next(iter(loader))
    side = CROP if spec.max_side > CROP else spec.max_side
    expected = (BATCH[size_of(spec)], 3, side, side)
    if tuple(images.shape) != expected or images.dtype != torch.uint8:
        raise RuntimeError(f"{name}: batch is {tuple(images.shape)} {images.dtype}, expected {expected} uint8")


def bench_size(size: int, quick: bool, rounds: int) -> dict:
    """Interleave the contenders on one dataset; print the table; return the JSON-ready summary."""
    spec = datasets.spec(size, quick)
    datasets.ensure(spec)
    print(f"\n=== {size} px: {spec.count} images, {spec.path.name}, batch {BATCH[size]}, {WORKERS} workers ===")
    # The PIL workers fork first, before numba starts its threads in this process.
    builders = {"PIL DataLoader": pil_loader, "upstream FFCV": ffcv_loader, "torchstrap seeded": torchstrap_loader}
    if size == 256:  # datasets larger than RAM: pages read into the process in a quasi-random order
        builders["upstream FFCV, os_cache off"] = functools.partial(ffcv_loader, os_cache=False)
        builders["torchstrap seeded, os_cache off"] = functools.partial(torchstrap_loader, os_cache=False)
    contenders: dict[str, Callable[[], float]] = {}
    notes: dict[str, str] = {}
    for name, build in builders.items():
        t0 = time.perf_counter()
        try:
            loader = build(spec)
            check_batch(name, loader, spec)
            epoch_rate(loader)()  # warm-up epoch: compiling, page cache, worker start
        except (ImportError, AttributeError) as err:  # our pipeline not (fully) there yet
            notes[name] = f"not measured: {err}"
            print(f"  {name}: {notes[name]}")
            continue
        print(f"  {name}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
        contenders[name] = epoch_rate(loader)
    contenders["decode only, 1 core"] = decode_ceiling(spec)

    values = interleave(contenders, rounds)
    summaries = [Summary(name, "img/s", v) for name, v in values.items()]
    ceiling_2core = 2 * Summary("", "", values["decode only, 1 core"]).median
    print_table(f"{size} px loader throughput (higher is better), ratios to upstream FFCV", summaries,
                reference="upstream FFCV" if "upstream FFCV" in values else None)
    ratios = {}
    med = {s.name: s.median for s in summaries}
    if "torchstrap seeded" in med:
        ratios["torchstrap / upstream FFCV"] = med["torchstrap seeded"] / med["upstream FFCV"]
        ratios["torchstrap / PIL DataLoader"] = med["torchstrap seeded"] / med["PIL DataLoader"]
        ratios["torchstrap / 2-core decode ceiling"] = med["torchstrap seeded"] / ceiling_2core
    if "torchstrap seeded, os_cache off" in med:
        ratios["torchstrap os_cache off / on"] = med["torchstrap seeded, os_cache off"] / med["torchstrap seeded"]
        ratios["torchstrap os_cache off / upstream FFCV os_cache off"] = (
            med["torchstrap seeded, os_cache off"] / med["upstream FFCV, os_cache off"])
    ratios["upstream FFCV / PIL DataLoader"] = med["upstream FFCV"] / med["PIL DataLoader"]
    ratios["upstream FFCV / 2-core decode ceiling"] = med["upstream FFCV"] / ceiling_2core
    ratios["PIL DataLoader / 2-core decode ceiling"] = med["PIL DataLoader"] / ceiling_2core
    for k, v in ratios.items():
        print(f"  {k:<52s} {v:.2f}")
    return {"images": spec.count, "batch_size": BATCH[size], "workers": WORKERS, "rounds": rounds,
            "contenders": [s.as_dict() for s in summaries], "decode_ceiling_2core": ceiling_2core,
            "ratios": ratios, "notes": notes}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs="+", default=[256, 32], choices=[256, 32])
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 6)
    if len(args.size) > 1:  # one process per size: the PIL workers must fork before numba starts threads
        for size in args.size:
            cmd = [sys.executable, __file__, "--size", str(size), "--rounds", str(rounds)] + ["--quick"] * args.quick
            subprocess.run(cmd, check=True)
        return
    size = args.size[0]
    result = bench_size(size, args.quick, rounds)
    write_results(f"loader_{size}px" + ("_quick" if args.quick else ""), {"quick": args.quick, **result})


if __name__ == "__main__":
    main()
