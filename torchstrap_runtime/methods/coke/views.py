"""CoKe's views: the three ImageNet recipes (idstcv/CoKe main_{single,double,multi}_view.py) as seeded FFCV pipelines.

    pipelines, mapper = coke_imagenet_multi_view(seed=0)
    loader = Loader("train.beton", batch_size=256, pipelines=pipelines, custom_field_mapper=mapper)
    # batches: (view 1, label, view 2, small 1, ..., small 6)

Each view: RandomResizedCrop -> colour jitter (p 0.8, torchvision's random order) -> grayscale (p 0.2) ->
Gaussian blur (sigma in [0.1, 2]) -> [solarization, view 2 only] -> horizontal flip (p 0.5) -> ImageNet
normalisation, float32 NCHW. The authors blur with PIL's radius-sigma filter, which has no kernel size;
here the kernel is torchvision's with an odd size of about a tenth of the crop (23 px at 224, 9 px at 96).
Crops use bilinear interpolation, as torchvision does on PIL images (`interpolation="area"` is faster).

Every builder also takes `flip_p` (0 for digits), `to_input` (a function returning the ops that follow
the flip, e.g. a GPU normalisation; default: `to_model_input()`) and `index` (True adds an 'index' output,
each sample's dataset index, last in the batch: CoKe's label memory needs it; see SampleIndexDecoder).

The ops, seeds and op names are those of the shared builder, `methods.views` (`build_views`).
Seeds: `seed` is one base seed; every op of every view gets its own seed derived from it and its name
("view2/blur", ...), so no two ops share draws; `seed=None` leaves every op fresh. `op_seeds` overrides
single ops by name (e.g. {"image/crop": 7}); `op_seed_names(builder)` lists the names.
"""
from typing import Callable, List, Mapping, Optional

from ..views import (IMAGENET_MEAN, IMAGENET_STD, MILD_JITTER, STRONG_JITTER, Pipelines,  # noqa: F401  (re-exported)
                     blur_kernel_size, build_views, derive_seed, op_seed_names, op_seed_names_of, to_model_input)


def coke_imagenet_single_view(seed: Optional[int] = None, image_size: int = 224, scale=(0.08, 1.0),
                              jitter=STRONG_JITTER, blur_p: float = 0.5, interpolation: str = "bilinear",
                              op_seeds: Optional[Mapping[str, Optional[int]]] = None, flip_p: float = 0.5,
                              to_input: Optional[Callable[[], list]] = None, index: bool = False) -> Pipelines:
    """main_single_view.py: one 224 px view, strong jitter, blur p 0.5. Outputs: image, label."""
    view = dict(name="image", image_size=image_size, scale=scale, jitter=jitter, blur_p=blur_p,
                interpolation=interpolation)
    return build_views([view], seed, op_seeds, "coke_imagenet_single_view", index, flip_p=flip_p, to_input=to_input)


def _large_views(image_size, scale, jitter, blur_p, solarize_p, interpolation) -> List[dict]:
    return [dict(name="image", image_size=image_size, scale=scale, jitter=jitter, blur_p=blur_p[0],
                 interpolation=interpolation),
            dict(name="view2", image_size=image_size, scale=scale, jitter=jitter, blur_p=blur_p[1],
                 solarize_p=solarize_p, interpolation=interpolation)]


def coke_imagenet_double_view(seed: Optional[int] = None, image_size: int = 224, scale=(0.08, 1.0),
                              jitter=MILD_JITTER, blur_p=(1.0, 0.1), solarize_p: float = 0.2,
                              interpolation: str = "bilinear",
                              op_seeds: Optional[Mapping[str, Optional[int]]] = None, flip_p: float = 0.5,
                              to_input: Optional[Callable[[], list]] = None, index: bool = False) -> Pipelines:
    """main_double_view.py: two 224 px views, mild jitter, blur p 1.0 / 0.1, solarization 0.2 on view 2.
    Outputs: image (view 1), label, view2."""
    views = _large_views(image_size, scale, jitter, blur_p, solarize_p, interpolation)
    return build_views(views, seed, op_seeds, "coke_imagenet_double_view", index, flip_p=flip_p, to_input=to_input)


def coke_imagenet_multi_view(seed: Optional[int] = None, image_size: int = 224, scale=(0.08, 1.0),
                             jitter=MILD_JITTER, blur_p=(1.0, 0.1), solarize_p: float = 0.2,
                             num_small_crops: int = 6, small_size: int = 96, small_scale=(0.05, 0.6),
                             small_jitter=STRONG_JITTER, small_blur_p: float = 0.5, interpolation: str = "bilinear",
                             op_seeds: Optional[Mapping[str, Optional[int]]] = None, flip_p: float = 0.5,
                             to_input: Optional[Callable[[], list]] = None, index: bool = False) -> Pipelines:
    """main_multi_view.py: the two large views of the double-view recipe plus `num_small_crops` crops of
    96 px (scale 0.05-0.6, strong jitter, blur p 0.5). Outputs: image, label, view2, small1, ..., smallN."""
    if isinstance(num_small_crops, bool) or not isinstance(num_small_crops, int) or num_small_crops < 0:
        raise ValueError(f"coke_imagenet_multi_view: num_small_crops must be an int >= 0, got {num_small_crops!r}")
    views = _large_views(image_size, scale, jitter, blur_p, solarize_p, interpolation)
    views += [dict(name=f"small{i}", image_size=small_size, scale=small_scale, jitter=small_jitter,
                   blur_p=small_blur_p, interpolation=interpolation) for i in range(1, num_small_crops + 1)]
    return build_views(views, seed, op_seeds, "coke_imagenet_multi_view", index, flip_p=flip_p, to_input=to_input)
