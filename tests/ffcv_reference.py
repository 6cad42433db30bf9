"""Straight transcriptions of FFCV's recipe code, one process, without fastargs or CUDA:

- libffcv/ffcv-imagenet, train_imagenet.py: `get_step_lr`, `get_cyclic_lr`, the per-iteration lrs of
  `ImageNetTrainer.train_loop` (np.interp between the lr of an epoch and of the next), `get_resolution`,
  `BlurPoolConv2d` and `apply_blurpool` of `create_model_and_scaler`, the two groups of `create_optimizer`;
- libffcv/ffcv, examples/cifar/train_cifar.py: the one-triangle `lr_schedule` of `train` (LambdaLR factors)
  and `construct_model` (ResNet-9: conv_bn, Residual, Mul, Flatten).

Written from their code, not from torchstrap_runtime.recipes: the tests hold ours against these.
"""

from __future__ import annotations

import numpy as np
import torch as ch
import torch.nn.functional as F


# ---------------------------------------------------------------- ffcv-imagenet
def get_step_lr(epoch, lr, step_ratio, step_length, epochs):
    if epoch >= epochs:
        return 0
    num_steps = epoch // step_length
    return step_ratio**num_steps * lr


def get_cyclic_lr(epoch, lr, epochs, lr_peak_epoch):
    xs = [0, lr_peak_epoch, epochs]
    ys = [1e-4 * lr, lr, 0]
    return np.interp([epoch], xs, ys)[0]


def imagenet_run_lrs(get_lr, epochs, iters):
    """The lr train_loop sets before each iteration of every epoch, concatenated over the run."""
    run = []
    for epoch in range(epochs):
        lr_start, lr_end = get_lr(epoch), get_lr(epoch + 1)
        lrs = np.interp(np.arange(iters), [0, iters], [lr_start, lr_end])
        run.extend(lrs)
    return run


def get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    assert min_res <= max_res
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
    final_res = int(np.round(interp[0] / 32)) * 32
    return final_res


class BlurPoolConv2d(ch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        default_filter = ch.tensor([[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 16.0
        filt = default_filter.repeat(conv.in_channels, 1, 1, 1)
        self.conv = conv
        self.register_buffer('blur_filter', filt)

    def forward(self, x):
        blurred = F.conv2d(x, self.blur_filter, stride=1, padding=(1, 1),
                           groups=self.conv.in_channels, bias=None)
        return self.conv.forward(blurred)


def apply_blurpool(mod: ch.nn.Module):
    for (name, child) in mod.named_children():
        if isinstance(child, ch.nn.Conv2d) and (np.max(child.stride) > 1 and child.in_channels >= 16):
            setattr(mod, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)


def imagenet_param_groups(model, weight_decay):
    all_params = list(model.named_parameters())
    bn_params = [v for k, v in all_params if ('bn' in k)]
    other_params = [v for k, v in all_params if not ('bn' in k)]
    return [{'params': bn_params, 'weight_decay': 0.}, {'params': other_params, 'weight_decay': weight_decay}]


# ---------------------------------------------------------------- ffcv examples/cifar
def cifar_lr_schedule(epochs, iters_per_epoch, lr_peak_epoch):
    return np.interp(np.arange((epochs + 1) * iters_per_epoch),
                     [0, lr_peak_epoch * iters_per_epoch, epochs * iters_per_epoch],
                     [0, 1, 0])


class Mul(ch.nn.Module):
    def __init__(self, weight):
        super(Mul, self).__init__()
        self.weight = weight

    def forward(self, x): return x * self.weight


class Flatten(ch.nn.Module):
    def forward(self, x): return x.view(x.size(0), -1)


class Residual(ch.nn.Module):
    def __init__(self, module):
        super(Residual, self).__init__()
        self.module = module

    def forward(self, x): return x + self.module(x)


def conv_bn(channels_in, channels_out, kernel_size=3, stride=1, padding=1, groups=1):
    return ch.nn.Sequential(
        ch.nn.Conv2d(channels_in, channels_out, kernel_size=kernel_size,
                     stride=stride, padding=padding, groups=groups, bias=False),
        ch.nn.BatchNorm2d(channels_out),
        ch.nn.ReLU(inplace=True)
    )


def construct_model(num_class=10):
    return ch.nn.Sequential(
        conv_bn(3, 64, kernel_size=3, stride=1, padding=1),
        conv_bn(64, 128, kernel_size=5, stride=2, padding=2),
        Residual(ch.nn.Sequential(conv_bn(128, 128), conv_bn(128, 128))),
        conv_bn(128, 256, kernel_size=3, stride=1, padding=1),
        ch.nn.MaxPool2d(2),
        Residual(ch.nn.Sequential(conv_bn(256, 256), conv_bn(256, 256))),
        conv_bn(256, 128, kernel_size=3, stride=1, padding=0),
        ch.nn.AdaptiveMaxPool2d((1, 1)),
        Flatten(),
        ch.nn.Linear(128, num_class, bias=False),
        Mul(0.2)
    )
