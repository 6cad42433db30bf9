"""FFCV's recipes: libffcv/ffcv-imagenet (`train_imagenet.py`, its rn50_*/rn18_* configs) and FFCV's CIFAR-10
example (`examples/cifar/train_cifar.py`), the pieces our Trainer does not have otherwise.

- progressive resizing: `get_resolution(epoch, ...)` (linear from `min_res` at `start_ramp` to `max_res` at
  `end_ramp`, rounded to a multiple of 32, half to even), applied to the training loader's decoder before each
  epoch by `follow_resolution`;
- their learning-rate schedules per iteration: `ffcv_lr` (the `scheduler.name` choices ffcv_cyclic, ffcv_step,
  ffcv_cifar_cyclic, with `scheduler.lr_peak_epoch`);
- `bn_without_weight_decay`: ffcv-imagenet's optimizer groups (parameters whose name contains "bn": no decay);
- BlurPool (`apply_blurpool`): every Conv2d with a stride above 1 and at least 16 input channels is preceded by
  a fixed depthwise 3x3 binomial blur ([1, 2, 1] x [1, 2, 1] / 16, stride 1, padding 1);
- `flip_tta`: test-time augmentation `lr_tta`, the logits of the images plus those of their left-right mirror
  (a sum, as both scripts compute it; the loss is taken on that sum);
- `RecipeTrainer` (test_time_flips), `ImageNetRecipeTrainer` (the resizing and the optimizer groups): the bases
  of a recipe experiment's Trainer.

Importing this module declares the keys under their FFCV names: `resolution.{min_res, max_res, end_ramp,
start_ramp}`, `validation.{resolution, lr_tta}`, `model.use_blurpool`, `optimizer.bn_wd`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Bool, Int, Param, Section, param
from ..trainer import Trainer

RESOLUTION_MULTIPLE = 32   # ffcv-imagenet rounds ramp resolutions to multiples of 32
BLUR_MIN_CHANNELS = 16     # BlurPool goes before strided convolutions with at least this many input channels

Section("resolution", "progressive resizing of the training images (ffcv-imagenet)").params(
    min_res=Param(Int(min=1), "training resolution up to start_ramp", default=160),
    max_res=Param(Int(min=1), "training resolution from end_ramp on", default=192),
    end_ramp=Param(Int(min=0), "epoch at which the training resolution reaches max_res", default=0),
    start_ramp=Param(Int(min=0), "epoch after which the training resolution starts to grow", default=0),
)
Section("validation", "evaluation as ffcv-imagenet does it").params(
    resolution=Param(Int(min=1), "side of the center-cropped validation images (also at the end of training)",
                     default=256),
    lr_tta=Param(Bool(), "test-time augmentation: add the logits of the left-right flipped images", default=True),
)
Section("model", "the network").params(
    use_blurpool=Param(Bool(), "BlurPool before every strided convolution with >= 16 input channels", default=False),
)
Section("optimizer", "the optimizer").params(
    bn_wd=Param(Bool(), "weight decay on BatchNorm parameters too (false: ffcv-imagenet, none on names "
                "containing 'bn')", default=True),
)


# ---------------------------------------------------------------------- progressive resizing
def get_resolution(epoch: int, min_res: int, max_res: int, end_ramp: int, start_ramp: int) -> int:
    """Training resolution of `epoch`: min_res up to start_ramp, max_res from end_ramp, in between the linear
    ramp rounded (half to even) to a multiple of 32."""
    if min_res > max_res:
        raise ValueError(f"resolution.min_res ({min_res}) must not exceed resolution.max_res ({max_res})")
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    ramp = float(np.interp(epoch, (start_ramp, end_ramp), (min_res, max_res)))
    return RESOLUTION_MULTIPLE * round(ramp / RESOLUTION_MULTIPLE)


@param("resolution.min_res")
@param("resolution.max_res")
@param("resolution.end_ramp")
@param("resolution.start_ramp")
def train_resolution(epoch: int, min_res: int, max_res: int, end_ramp: int, start_ramp: int) -> int:
    """`get_resolution` of `epoch` with the `resolution` section's values."""
    return get_resolution(epoch, min_res, max_res, end_ramp, start_ramp)


def set_resolution(loader: Any, resolution: int, field: str = "image") -> None:
    """Make `loader`'s decoder of `field` output `resolution` x `resolution` images from its next epoch on."""
    specs = getattr(loader, "pipeline_specs", {})
    decoder = getattr(specs.get(field), "decoder", None)
    if not hasattr(decoder, "output_size"):
        raise ValueError(f"progressive resizing needs a loader whose {field!r} pipeline starts with a resizing "
                         f"decoder (e.g. RandomResizedCrop), got {type(decoder).__name__}")
    decoder.output_size = (resolution, resolution)


def follow_resolution(loader: Any, epoch: int) -> int:
    """Before an epoch: set the training loader's decoder to the epoch's resolution; returns it."""
    resolution = train_resolution(epoch)
    set_resolution(loader, resolution)
    return resolution


# ---------------------------------------------------------------------- optimizer groups
@param("optimizer.bn_wd")
def bn_without_weight_decay(optimizer: torch.optim.Optimizer, model: nn.Module, bn_wd: bool) -> None:
    """Unless `optimizer.bn_wd`: move the parameters whose name contains "bn" to a group without weight decay
    (ffcv-imagenet's two groups; a shortcut's BatchNorm, named downsample.1, keeps its decay as there)."""
    if bn_wd:
        return
    bn = {id(p) for name, p in model.named_parameters() if "bn" in name}
    moved = []
    for group in optimizer.param_groups:
        moved += [p for p in group["params"] if id(p) in bn]
        group["params"] = [p for p in group["params"] if id(p) not in bn]
    if moved:
        optimizer.add_param_group({"params": moved, "weight_decay": 0.0})


# ---------------------------------------------------------------------- BlurPool
def binomial_filter(channels: int) -> torch.Tensor:
    """[channels, 1, 3, 3] depthwise kernel: the outer product of [1, 2, 1] with itself, over 16."""
    taps = torch.tensor([1.0, 2.0, 1.0])
    return (torch.outer(taps, taps) / 16.0).expand(channels, 1, 3, 3).clone()


class BlurPoolConv2d(nn.Module):
    """A strided convolution `conv` applied after a fixed 3x3 binomial blur of each channel (stride 1, padding 1)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("blur_filter", binomial_filter(conv.in_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter, padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def needs_blurpool(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and max(module.stride) > 1 and module.in_channels >= BLUR_MIN_CHANNELS


def apply_blurpool(model: nn.Module) -> nn.Module:
    """Wrap every strided Conv2d with >= 16 input channels of `model` in `BlurPoolConv2d` (in place); returns it."""
    for name, child in model.named_children():
        if needs_blurpool(child):
            setattr(model, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)
    return model


# ---------------------------------------------------------------------- evaluation
def flip_tta(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The logits of `images` plus those of the images flipped left-right (NCHW: the last dimension)."""
    return model(images) + model(torch.flip(images, dims=[3]))


# ---------------------------------------------------------------------- trainers
class RecipeTrainer(Trainer):
    """The Trainer with FFCV's test-time augmentation: `test_time_flips` (validation.lr_tta)."""

    @param("validation.lr_tta")
    def test_time_flips(self, inputs: torch.Tensor, lr_tta: bool) -> torch.Tensor:
        """`flip_tta` of the model with validation.lr_tta, else the model's logits."""
        return flip_tta(self.model, inputs) if lr_tta else self.model(inputs)


class ImageNetRecipeTrainer(RecipeTrainer):
    """ffcv-imagenet's recipe: `initialize_optimizer` then `bn_without_weight_decay`; `before_train_epoch` sets the
    training decoder to the epoch's resolution (`follow_resolution`), recorded as `resolution` in the epoch's line."""

    def initialize_optimizer(self) -> None:
        super().initialize_optimizer()
        bn_without_weight_decay(self.optimizer, self.raw_model)

    def before_train_epoch(self) -> None:
        super().before_train_epoch()
        self.epoch_record["resolution"] = follow_resolution(self.train_loader, self.epoch)
