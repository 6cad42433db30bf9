"""The SSL baselines' view pipelines in img/s and ms per image: DINO's multi-crop (2 x 224 + 6 x 96 px) and
BYOL's two views (2 x 224 px), each built three ways on the same 256 px JPEGs.

  torchstrap seeded:  the runtime's seeded ops, every op with its own seed: RandomResizedCrop (bilinear),
                      RandomColorJitter (p 0.8, torchvision's random order), RandomGrayscale (p 0.2),
                      RandomGaussianBlur (torchvision's kernel, 23 px at 224, 9 px at 96, sigma 0.1-2),
                      RandomSolarization, RandomHorizontalFlip, normalisation to float32 NCHW.
  upstream FFCV:      the ops FFCV 1.0.2 has: its RandomResizedCrop decoder (area interpolation), RandomBrightness,
                      RandomContrast, RandomSaturation (p 0.8 each), flip, normalisation. It has no hue, grayscale,
                      Gaussian blur or solarization, so it does less work; it cannot decode one field twice, so it
                      reads a .beton holding each image once per view.
  PIL DataLoader:     torch DataLoader with the authors' torchvision transforms written with PIL (torchvision is
                      not a dependency): crop + resize (DINO: bicubic, as main_dino.py; BYOL: bilinear),
                      ImageEnhance jitter in random order + hue through HSV, grayscale, ImageFilter.GaussianBlur,
                      ImageOps.solarize, flip, to tensor, normalise.

The views (facebookresearch/dino main_dino.py DataAugmentationDINO; BYOL, Grill et al. 2020, table 6):
  DINO global 1: scale (0.4, 1), jitter (0.4, 0.4, 0.2, 0.1), blur p 1.0
  DINO global 2: scale (0.4, 1), the same jitter, blur p 0.1, solarization p 0.2
  DINO local x6: 96 px, scale (0.05, 0.4), the same jitter, blur p 0.5  (main_dino.py's default is 8 local crops)
  BYOL view 1/2: scale (0.08, 1), the same jitter, blur p 1.0 / 0.1, solarization p 0 / 0.2
All views: flip p 0.5, jitter p 0.8, grayscale p 0.2. Same images, 2 workers, random order, batch 64.
One round = one epoch per contender, interleaved; img/s counts images (each with all its views); ms per image
is wall time / images with the 2 workers busy. The machine's 1-minute load average is recorded after every
epoch.

    python bench/bench_ssl_pipelines.py [--quick] [--rounds N] [--pipelines dino byol]
"""
from __future__ import annotations

import io
import os
import random
import statistics
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np
import torch

import datasets
from bench_coke_pipeline import MEAN, STD, eight_copies, pil_view, upstream_view
from common import Summary, interleave, parser, print_table, write_results

WORKERS, BATCH = 2, 64
warnings.filterwarnings("ignore", message="Cannot cache compiled function")  # upstream's ctypes JPEG decoder
MILD_JITTER = (0.4, 0.4, 0.2, 0.1)


def view(name: str, size: int, scale, blur_p: float, solarize_p: float = 0.0) -> dict:
    return dict(name=name, size=size, scale=scale, blur_p=blur_p, solarize_p=solarize_p)


PIPELINES = {
    "dino": dict(label="DINO multi-crop, 2 × 224 + 6 × 96 px", resample="BICUBIC",
                 views=[view("image", 224, (0.4, 1.0), 1.0), view("view2", 224, (0.4, 1.0), 0.1, 0.2)]
                 + [view(f"small{i}", 96, (0.05, 0.4), 0.5) for i in range(1, 7)]),
    "byol": dict(label="BYOL two views, 2 × 224 px", resample="BILINEAR",
                 views=[view("image", 224, (0.08, 1.0), 1.0), view("view2", 224, (0.08, 1.0), 0.1, 0.2)]),
}
UPSTREAM_MISSING = "hue, grayscale, Gaussian blur, solarization"


# ---------------------------------------------------------------- PIL DataLoader (the authors' transforms)
class PILViews(torch.utils.data.Dataset):
    """JPEG bytes -> PIL image -> every view of the pipeline, float32 CHW normalised."""

    def __init__(self, jpegs: list[bytes], labels: list[int], pipeline: dict):
        self.jpegs, self.labels, self.pipeline = jpegs, labels, pipeline

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, index: int):
        from PIL import Image

        rng = random.Random()
        image = Image.open(io.BytesIO(self.jpegs[index])).convert("RGB")
        views = [pil_view(image, rng, v["size"], v["scale"], MILD_JITTER, v["blur_p"], v["solarize_p"],
                          resample=self.pipeline["resample"]) for v in self.pipeline["views"]]
        return views, self.labels[index]


def pil_loader(spec: datasets.Spec, pipeline: dict) -> Iterable:
    return torch.utils.data.DataLoader(PILViews(*datasets.read_jpegs(spec.path), pipeline), batch_size=BATCH,
                                       shuffle=True, num_workers=WORKERS, persistent_workers=True, drop_last=True,
                                       prefetch_factor=2)


# ---------------------------------------------------------------- upstream FFCV (the ops it has)
def ffcv_loader(spec: datasets.Spec, pipeline: dict) -> Iterable:
    """Upstream FFCV's Loader on the .beton holding each image once per view (fields the pipeline does not use
    are not decoded)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    path = eight_copies(spec)  # fields image, label, view2, small1..small6
    used = {v["name"]: upstream_view(v["size"], v["scale"], MILD_JITTER) for v in pipeline["views"]}
    pipelines = {name: None for name in ["image", "view2", *[f"small{i}" for i in range(1, 7)]]}
    pipelines.update(used)
    pipelines["label"] = [IntDecoder(), ToTensor()]
    with ops_compiled_once():
        return Loader(str(path), batch_size=BATCH, num_workers=WORKERS, order=OrderOption.RANDOM,
                      pipelines=pipelines, drop_last=True)


@contextmanager
def ops_compiled_once():
    """While upstream FFCV builds a Loader, its op functions go through the runtime's `compile_op`: the same
    numba options as FFCV's `Compiler.compile`, but each (code, closure values) compiled once per process and
    cached on disk. Upstream compiles every view's copy of every op again, minutes for eight views on this
    machine: start-up this bench does not measure. The batches run the same compiled ops either way."""
    from ffcv.pipeline.compiler import Compiler

    from torchstrap_runtime.data.loader import compile_op

    original = Compiler.__dict__["compile"]

    def compile_once(cls, code, signature=None):
        return compile_op(code) if signature is None else original.__func__(cls, code, signature)

    Compiler.compile = classmethod(compile_once)
    try:
        yield
    finally:
        Compiler.compile = original


# ---------------------------------------------------------------- torchstrap seeded pipeline
def blur_kernel_size(size: int) -> int:
    """torchvision's odd kernel of about a tenth of the crop (23 px at 224, 9 px at 96)."""
    return max(3, int(size / 10) // 2 * 2 + 1)


def seeded_view(v: dict, seed: int) -> list:
    """The view's ops from the runtime's seeded ops, each with its own seed (seed, seed + 1, ...)."""
    from torchstrap_runtime import data as ts

    ops = [ts.RandomResizedCrop((v["size"], v["size"]), scale=v["scale"], seed=seed, interpolation="bilinear"),
           ts.RandomColorJitter(*MILD_JITTER, p=0.8, seed=seed + 1, random_order=True),
           ts.RandomGrayscale(p=0.2, seed=seed + 2),
           ts.RandomGaussianBlur(kernel_size=blur_kernel_size(v["size"]), sigma=(0.1, 2.0), p=v["blur_p"],
                                 seed=seed + 3)]
    if v["solarize_p"] > 0:
        ops.append(ts.RandomSolarization(p=v["solarize_p"], threshold=128, seed=seed + 4))
    return [*ops, ts.RandomHorizontalFlip(p=0.5, seed=seed + 5), *float_nchw()]


def float_nchw() -> list:
    """uint8 NHWC -> ImageNet-normalised float32 NCHW tensors (FFCV's ops, as the upstream pipeline ends)."""
    from ffcv.transforms import Convert, NormalizeImage, ToTensor, ToTorchImage

    return [NormalizeImage(MEAN * 255, STD * 255, np.float32), ToTensor(), ToTorchImage(), Convert(torch.float32)]


def torchstrap_loader(spec: datasets.Spec, pipeline: dict) -> Iterable:
    from ffcv.fields.basics import IntDecoder
    from ffcv.transforms import ToTensor

    from torchstrap_runtime import data as ts

    pipelines = {v["name"]: seeded_view(v, 100 * i) for i, v in enumerate(pipeline["views"])}
    pipelines["label"] = [IntDecoder(), ToTensor()]
    mapper = {v["name"]: "image" for v in pipeline["views"] if v["name"] != "image"}
    return ts.Loader(str(spec.path), batch_size=BATCH, num_workers=WORKERS, order=ts.OrderOption.RANDOM, seed=0,
                     pipelines=pipelines, custom_field_mapper=mapper, drop_last=True)


# ---------------------------------------------------------------- measuring
def epoch_rate(loader: Iterable, views: int, loads: list[float]) -> Callable[[], float]:
    """A function iterating one epoch of `loader` (checking each batch holds `views` float32 views of `BATCH`
    images); it returns img/s and appends the 1-minute load average after the epoch to `loads`."""

    def run() -> float:
        n = 0
        t0 = time.perf_counter()
        for batch in loader:
            pil = isinstance(batch[0], list)  # the DataLoader's batch: (views, labels)
            images = batch[0] if pil else [x for x in batch if x.ndim == 4]
            if len(images) != views or images[0].shape[0] != BATCH or images[0].dtype != torch.float32:
                raise RuntimeError(f"a batch of {len(images)} views {tuple(images[0].shape)} {images[0].dtype}, "
                                   f"expected {views} float32 views of {BATCH} images")
            n += images[0].shape[0]
        rate = n / (time.perf_counter() - t0)
        loads.append(os.getloadavg()[0])
        return rate

    return run


BUILDERS = {"PIL DataLoader": pil_loader, "upstream FFCV": ffcv_loader, "torchstrap seeded": torchstrap_loader}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pipelines", nargs="+", choices=list(PIPELINES), default=list(PIPELINES))
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 4)
    spec = datasets.Spec("jpeg256", 64 if args.quick else 512, 224, 288)  # the loader bench's kind of images
    datasets.ensure(spec)
    contenders: dict[str, dict[str, Callable[[], float]]] = {name: {} for name in args.pipelines}
    loads: dict[str, list[float]] = {name: [] for name in args.pipelines}
    # The PIL workers fork first, before numba starts its threads in this process.
    for who, build in BUILDERS.items():
        for name in args.pipelines:
            pipeline = PIPELINES[name]
            t0 = time.perf_counter()
            loader = build(spec, pipeline)
            epoch_rate(loader, len(pipeline["views"]), [])()  # warm-up: compiling, page cache, worker start
            print(f"  {name}, {who}: built and warmed up in {time.perf_counter() - t0:.1f} s", flush=True)
            contenders[name][who] = epoch_rate(loader, len(pipeline["views"]), loads[name])
    results = {}
    for name in args.pipelines:
        pipeline = PIPELINES[name]
        print(f"=== {pipeline['label']}: {spec.count} images of 224-288 px, batch {BATCH}, {WORKERS} workers ===")
        values = interleave(contenders[name], rounds)
        summaries = [Summary(who, "img/s", v) for who, v in values.items()]
        print_table(f"{pipeline['label']} (images with all their views per s, higher is better), ratios to "
                    "upstream FFCV", summaries, reference="upstream FFCV")
        med = {s.name: s.median for s in summaries}
        ms = {who: 1000.0 / rate for who, rate in med.items()}
        ratios = {"torchstrap / upstream FFCV (fewer ops)": med["torchstrap seeded"] / med["upstream FFCV"],
                  "torchstrap / PIL DataLoader": med["torchstrap seeded"] / med["PIL DataLoader"],
                  "upstream FFCV / PIL DataLoader": med["upstream FFCV"] / med["PIL DataLoader"]}
        for who, value in ms.items():
            print(f"  {who:<42s} {value:.2f} ms per image ({len(pipeline['views'])} views, {WORKERS} workers)")
        for k, v in ratios.items():
            print(f"  {k:<42s} {v:.2f}")
        print(f"  1-minute load average after each epoch: median {statistics.median(loads[name]):.2f} "
              f"[{min(loads[name]):.2f}–{max(loads[name]):.2f}]\n")
        results[name] = {"label": pipeline["label"], "views": pipeline["views"], "pil_resample": pipeline["resample"],
                         "contenders": [s.as_dict() for s in summaries], "ms_per_image": ms, "ratios": ratios,
                         "load_average_1min": loads[name], "upstream_missing_ops": UPSTREAM_MISSING}
    write_results("ssl_pipelines" + ("_quick" if args.quick else ""),
                  {"quick": args.quick, "images": spec.count, "batch_size": BATCH, "workers": WORKERS,
                   "rounds": rounds, "results": results})


if __name__ == "__main__":
    main()
