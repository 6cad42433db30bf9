"""The views of the self-supervised methods as seeded FFCV pipelines: one builder for every method's recipe.

    pipelines, mapper = build_views([dict(name="image", image_size=224, scale=(0.08, 1), jitter=(0.4, 0.4, 0.2, 0.1),
                                          blur_p=1.0), ...], seed=0, op_seeds=None, builder="byol")

Each view: RandomResizedCrop -> colour jitter (torchvision's random order) -> grayscale -> Gaussian blur (sigma in
[0.1, 2]) -> [solarization] -> horizontal flip -> the model's input ops (default: ImageNet normalisation, float32
NCHW). A view is a dict of `view_ops`' keywords; its name is its output (the first is 'image', the field the
others decode again through the custom field mapper). The blur kernel is torchvision's with an odd size of
about a tenth of the crop (23 px at 224, 9 px at 96): the authors' PIL blur has none.

Seeds: `seed` is one base seed; every op of every view gets its own seed derived from it and its name
("view2/blur", ...), so no two ops share draws; `seed=None` leaves every op fresh. `op_seeds` overrides single
ops by name (e.g. {"image/crop": 7}); `op_seed_names(builder)` lists the names.
"""
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..ffcv_required import require_ffcv

require_ffcv("the self-supervised views (seeded FFCV pipelines: CoKe's and the baselines')")
from ffcv.fields.decoders import IntDecoder
from ffcv.transforms import Convert, NormalizeImage, ToTensor, ToTorchImage

from ..data import (RandomColorJitter, RandomGaussianBlur, RandomGrayscale, RandomHorizontalFlip, RandomResizedCrop,
                    RandomSolarization, SampleIndexDecoder)
from ..data.rng import mix64_py, stream_id
from .recipes import MILD_JITTER, STRONG_JITTER  # noqa: F401  (the views' jitter strengths)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255

Pipelines = Tuple[Dict[str, list], Dict[str, str]]


def derive_seed(seed: Optional[int], name: str) -> Optional[int]:
    """A 63-bit seed for op `name` from the base seed (None stays None: fresh randomness)."""
    return None if seed is None else mix64_py(mix64_py(seed) ^ stream_id(name)) >> 1


def blur_kernel_size(image_size: int) -> int:
    """An odd kernel of about a tenth of the crop (23 at 224, 9 at 96), at least 3."""
    return max(3, int(image_size / 10) // 2 * 2 + 1)


def to_model_input(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list:
    """uint8 NHWC images -> normalised float32 NCHW tensors."""
    return [NormalizeImage(np.asarray(mean, float), np.asarray(std, float), np.float32), ToTensor(), ToTorchImage(),
            Convert(torch.float32)]


def view_ops(name: str, seed: Optional[int], op_seeds: Mapping[str, Optional[int]], image_size: int,
              scale: Tuple[float, float], jitter: Tuple[float, float, float, float], blur_p: float,
              solarize_p: float = 0.0, jitter_p: float = 0.8, grayscale_p: float = 0.2,
              blur_sigma: Tuple[float, float] = (0.1, 2.0), flip_p: float = 0.5, interpolation: str = "bilinear",
              mean=IMAGENET_MEAN, std=IMAGENET_STD, to_input: Optional[Callable[[], list]] = None) -> list:
    """One view's ops (output `name`); op seeds are op_seeds[f"{name}/{op}"] or derived from `seed`."""
    def seed_of(op: str) -> Optional[int]:
        key = f"{name}/{op}"
        return op_seeds[key] if key in op_seeds else derive_seed(seed, key)

    b, c, s, h = jitter
    ops = [
        RandomResizedCrop((image_size, image_size), scale=scale, seed=seed_of("crop"), interpolation=interpolation),
        RandomColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=jitter_p, seed=seed_of("jitter"),
                          random_order=True),
        RandomGrayscale(p=grayscale_p, seed=seed_of("grayscale")),
        RandomGaussianBlur(kernel_size=blur_kernel_size(image_size), sigma=blur_sigma, p=blur_p, seed=seed_of("blur")),
    ]
    if solarize_p > 0:
        ops.append(RandomSolarization(p=solarize_p, threshold=128, seed=seed_of("solarize")))
    tail = to_input() if to_input is not None else to_model_input(mean, std)
    return [*ops, RandomHorizontalFlip(p=flip_p, seed=seed_of("flip")), *tail]


def _check_op_seeds(op_seeds: Optional[Mapping], pipelines: Dict[str, list], builder: str) -> Mapping:
    op_seeds = dict(op_seeds or {})
    names = set(op_seed_names_of(pipelines))
    unknown = sorted(set(op_seeds) - names)
    if unknown:
        raise ValueError(f"{builder}: op_seeds names {unknown} are not ops of this recipe; its ops: {sorted(names)}")
    return op_seeds


def op_seed_names_of(pipelines: Dict[str, list]) -> List[str]:
    kinds = {RandomResizedCrop: "crop", RandomColorJitter: "jitter", RandomGrayscale: "grayscale",
             RandomGaussianBlur: "blur", RandomSolarization: "solarize", RandomHorizontalFlip: "flip"}
    return [f"{view}/{kinds[type(op)]}" for view, ops in pipelines.items() if ops
            for op in ops if type(op) in kinds]


def build_views(views: List[dict], seed: Optional[int], op_seeds: Optional[Mapping], builder: str,
           index: bool = False, **options) -> Pipelines:
    plain = {v["name"]: view_ops(seed=seed, op_seeds={}, **v, **options) for v in views}  # names, to check op_seeds
    op_seeds = _check_op_seeds(op_seeds, plain, builder)
    pipelines = ({v["name"]: view_ops(seed=seed, op_seeds=op_seeds, **v, **options) for v in views} if op_seeds
                 else plain)
    pipelines["label"] = [IntDecoder(), ToTensor()]
    mapper = {v["name"]: "image" for v in views if v["name"] != "image"}
    if index:  # last output: each sample's dataset index, read through the label field
        pipelines["index"] = [SampleIndexDecoder(), ToTensor()]
        mapper["index"] = "label"
    return pipelines, mapper


def op_seed_names(builder, **kwargs) -> List[str]:
    """Names of the ops a builder makes (the keys `op_seeds` accepts), e.g. 'view2/solarize'."""
    pipelines, _ = builder(seed=0, **kwargs)
    return op_seed_names_of(pipelines)
