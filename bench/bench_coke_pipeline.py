"""CoKe's multi-crop pipeline (2 x 224 + 6 x 96 px views per image) in img/s: torchstrap's seeded
`coke_imagenet_multi_view` vs upstream FFCV with the ops it has vs a PIL DataLoader like the authors'.

Same 256 px JPEGs (the loader bench's dataset), 2 workers, random order, batch 64, float32 normalised NCHW:
  torchstrap seeded:  coke_imagenet_multi_view(seed=0): bilinear crops, jitter in random order, grayscale,
                      Gaussian blur, solarization (view 2), flip, normalisation, every op seeded.
  upstream FFCV:      RandomResizedCrop decoder (area), RandomBrightness/Contrast/Saturation (p 0.8), flip,
                      normalisation: FFCV has no hue, grayscale, blur or solarization, so it does less work;
                      it cannot decode a field twice, so it reads a .beton storing each image once per view.
  PIL DataLoader:     PIL decode, crop + bilinear resize, ImageEnhance jitter in random order + hue through
                      HSV, grayscale, ImageFilter.GaussianBlur, ImageOps.solarize, flip, to tensor, normalise
                      (idstcv/CoKe's torchvision pipeline, written with PIL here: no torchvision dependency).
One round = one epoch per contender, interleaved; img/s counts images (each with its 8 views).

    python bench/bench_coke_pipeline.py [--quick] [--rounds N]
"""
from __future__ import annotations

import io
import math
import random
import time
from typing import Callable, Iterable

import numpy as np
import torch

import datasets
from common import Summary, interleave, parser, print_table, write_results

WORKERS, BATCH, LARGE, SMALL, NUM_SMALL = 2, 64, 224, 96, 6
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# ---------------------------------------------------------------- PIL DataLoader (the authors' kind of loader)
def crop_box(rng: random.Random, height: int, width: int, scale, ratio=(3 / 4, 4 / 3)):
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return 0, 0, height, width


def pil_view(image, rng: random.Random, size: int, scale, jitter, blur_p: float, solarize_p: float = 0.0,
             resample: str = "BILINEAR"):
    """One view as torchvision's transforms make it from a PIL image (`resample`: PIL's filter name)."""
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    top, left, h, w = crop_box(rng, image.height, image.width, scale)
    image = image.resize((size, size), getattr(Image, resample), box=(left, top, left + w, top + h))
    if rng.random() < 0.8:
        b, c, s, hue = jitter
        steps = [0, 1, 2, 3]
        rng.shuffle(steps)
        for step in steps:
            if step == 0:
                image = ImageEnhance.Brightness(image).enhance(rng.uniform(max(0, 1 - b), 1 + b))
            elif step == 1:
                image = ImageEnhance.Contrast(image).enhance(rng.uniform(max(0, 1 - c), 1 + c))
            elif step == 2:
                image = ImageEnhance.Color(image).enhance(rng.uniform(max(0, 1 - s), 1 + s))
            else:
                hsv = np.array(image.convert("HSV"))
                hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.uniform(-hue, hue) * 255)) % 256
                image = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.2:
        image = image.convert("L").convert("RGB")
    if rng.random() < blur_p:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    if rng.random() < solarize_p:
        image = ImageOps.solarize(image)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(MEAN, dtype=torch.float32)[:, None, None]) / torch.tensor(STD, dtype=torch.float32)[:, None, None]


class PILMultiCrop(torch.utils.data.Dataset):
    def __init__(self, jpegs: list[bytes], labels: list[int]):
        self.jpegs, self.labels = jpegs, labels

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, index: int):
        from PIL import Image

        rng = random.Random()
        image = Image.open(io.BytesIO(self.jpegs[index])).convert("RGB")
        mild, strong = (0.4, 0.4, 0.2, 0.1), (0.8, 0.8, 0.8, 0.2)
        views = [pil_view(image, rng, LARGE, (0.08, 1.0), mild, 1.0),
                 pil_view(image, rng, LARGE, (0.08, 1.0), mild, 0.1, 0.2)]
        views += [pil_view(image, rng, SMALL, (0.05, 0.6), strong, 0.5) for _ in range(NUM_SMALL)]
        return views, self.labels[index]


def pil_loader(spec: datasets.Spec) -> Iterable:
    return torch.utils.data.DataLoader(PILMultiCrop(*datasets.read_jpegs(spec.path)), batch_size=BATCH, shuffle=True,
                                       num_workers=WORKERS, persistent_workers=True, drop_last=True, prefetch_factor=2)


# ---------------------------------------------------------------- upstream FFCV (the ops it has)
def ffcv_loader(spec: datasets.Spec) -> Iterable:
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    mild, strong = (0.4, 0.4, 0.2, 0.1), (0.8, 0.8, 0.8, 0.2)
    pipelines = {"image": upstream_view(LARGE, (0.08, 1.0), mild), "label": [IntDecoder(), ToTensor()],
                 "view2": upstream_view(LARGE, (0.08, 1.0), mild)}
    pipelines.update({f"small{i}": upstream_view(SMALL, (0.05, 0.6), strong) for i in range(1, NUM_SMALL + 1)})
    return Loader(str(eight_copies(spec)), batch_size=BATCH, num_workers=WORKERS, order=OrderOption.RANDOM,
                  pipelines=pipelines, drop_last=True)


def upstream_view(size: int, scale, jitter) -> list:
    """One view with upstream FFCV's ops: its crop decoder (area interpolation), brightness, contrast and
    saturation (each p 0.8: it has no hue), flip, normalisation to float32 NCHW."""
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.transforms import (Convert, NormalizeImage, RandomBrightness, RandomContrast, RandomHorizontalFlip,
                                 RandomSaturation, ToTensor, ToTorchImage)

    b, c, s, _ = jitter
    return [RandomResizedCropRGBImageDecoder((size, size), scale=scale), RandomBrightness(b, 0.8),
            RandomContrast(c, 0.8), RandomSaturation(s, 0.8), RandomHorizontalFlip(),
            NormalizeImage(MEAN * 255, STD * 255, np.float32), ToTensor(), ToTorchImage(), Convert(torch.float32)]


def eight_copies(spec: datasets.Spec):
    """Upstream FFCV cannot decode one field twice: a .beton holding each image 8 times (same pixels,
    JPEG quality 90), one field per view."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from PIL import Image

    path = spec.path.with_name(spec.path.stem + "_x8.beton")
    if path.exists():
        return path
    jpegs, labels = datasets.read_jpegs(spec.path)
    names = ["image", "view2", *[f"small{i}" for i in range(1, NUM_SMALL + 1)]]

    class Copies:
        def __len__(self):
            return len(jpegs)

        def __getitem__(self, i):
            image = np.asarray(Image.open(io.BytesIO(jpegs[i])).convert("RGB"))
            return (image, int(labels[i]), *[image] * (len(names) - 1))

    fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=90), "label": IntField()}
    fields.update({n: RGBImageField(write_mode="jpg", jpeg_quality=90) for n in names[1:]})
    DatasetWriter(str(path), fields, num_workers=1).from_indexed_dataset(Copies())
    return path


# ---------------------------------------------------------------- torchstrap seeded pipeline
def torchstrap_loader(spec: datasets.Spec) -> Iterable:
    from torchstrap_runtime import data as ts

    pipelines, mapper = ts.coke_imagenet_multi_view(seed=0)
    return ts.Loader(str(spec.path), batch_size=BATCH, num_workers=WORKERS, order=ts.OrderOption.RANDOM, seed=0,
                     pipelines=pipelines, custom_field_mapper=mapper, drop_last=True)


def epoch_rate(loader: Iterable, pil: bool = False) -> Callable[[], float]:
    def run() -> float:
        n = 0
        t0 = time.perf_counter()
        for batch in loader:
            n += (batch[0][0] if pil else batch[0]).shape[0]
        return n / (time.perf_counter() - t0)

    return run


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    spec = datasets.spec(256, args.quick)
    datasets.ensure(spec)
    print(f"=== CoKe multi-crop: {spec.count} images, {spec.path.name}, batch {BATCH}, {WORKERS} workers ===")
    contenders = {}
    for name, build in {"PIL DataLoader": pil_loader, "upstream FFCV": ffcv_loader,
                        "torchstrap seeded": torchstrap_loader}.items():  # PIL workers fork before numba threads
        t0 = time.perf_counter()
        loader = build(spec)
        rate = epoch_rate(loader, pil=name == "PIL DataLoader")
        rate()  # warm-up: compiling, page cache, worker start
        print(f"  {name}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
        contenders[name] = rate
    values = interleave(contenders, rounds)
    summaries = [Summary(name, "img/s", v) for name, v in values.items()]
    print_table("CoKe multi-crop pipeline throughput (images of 8 views per s, higher is better), ratios to "
                "upstream FFCV", summaries, reference="upstream FFCV")
    med = {s.name: s.median for s in summaries}
    ratios = {"torchstrap / upstream FFCV (fewer ops)": med["torchstrap seeded"] / med["upstream FFCV"],
              "torchstrap / PIL DataLoader": med["torchstrap seeded"] / med["PIL DataLoader"]}
    for k, v in ratios.items():
        print(f"  {k:<42s} {v:.2f}")
    write_results("coke_pipeline" + ("_quick" if args.quick else ""),
                  {"quick": args.quick, "images": spec.count, "batch_size": BATCH, "workers": WORKERS,
                   "rounds": rounds, "contenders": [s.as_dict() for s in summaries], "ratios": ratios})


if __name__ == "__main__":
    main()
