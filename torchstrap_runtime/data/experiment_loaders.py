"""The loaders of a generated experiment, from the `data` section (sections.py) and the experiment's pipelines.

    train_loader(train_pipelines(), distributed=True)      # seeded order over data.train_path, drop_last
    val_loader(val_pipelines())                            # data.val_path in order
    knn_val_loader(val_pipelines)                          # the same, with `.bank`: the training set in order

`model_input(mean, std)` is the end of every image pipeline: uint8 NHWC images to normalised NCHW tensors,
on the GPU in the training dtype when training on CUDA.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from ffcv.loader import OrderOption
from ffcv.transforms import Convert, NormalizeImage, ToDevice, ToTensor, ToTorchImage

from ..config import param
from ..evaluation import KNNValLoader
from .loader import Loader
from .normalize_on_device import NormalizeOnDevice, batch_device


@param("training.device")
@param("training.dtype")
@param("training.channels_last")
def model_input(mean: np.ndarray, std: np.ndarray, device: str, dtype: str, channels_last: bool) -> list:
    """uint8 NHWC images -> NCHW tensors normalised by the per-channel `mean` and `std` (0-255 scale). On CUDA the
    uint8 batch moves to the GPU (non-blocking) and is normalised there in the training dtype (channels_last
    when training.channels_last); else float32 on the CPU."""
    target = batch_device(device)
    if target.type != "cuda":
        return [NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage(), Convert(torch.float32)]
    return [ToTensor(), ToDevice(target, non_blocking=True), ToTorchImage(channels_last=channels_last),
            NormalizeOnDevice(mean, std, getattr(torch, dtype))]


@param("data.train_path")
@param("data.batch_size")
@param("data.num_workers")
@param("data.loader_seed")
@param("data.os_cache")
def train_loader(pipelines: dict, custom_field_mapper: dict | None = None, distributed: bool = False, *,
                 train_path: str, batch_size: int, num_workers: int, loader_seed: int | None,
                 os_cache: bool) -> Loader:
    """The training loader: `pipelines` over data.train_path in the order seeded by data.loader_seed, full
    batches only. data.os_cache false (a dataset larger than RAM): the file is visited page by page in a seeded
    quasi-random order. `custom_field_mapper` {output: stored field} decodes a field again (views)."""
    order = OrderOption.RANDOM if os_cache else OrderOption.QUASI_RANDOM
    return Loader(train_path, batch_size=batch_size, num_workers=num_workers, order=order, seed=loader_seed,
                  os_cache=os_cache, drop_last=True, pipelines=pipelines, custom_field_mapper=custom_field_mapper,
                  distributed=distributed)


@param("data.val_path")
@param("data.val_batch_size")
@param("data.num_workers")
@param("data.os_cache")
def val_loader(pipelines: dict, distributed: bool = False, *, val_path: str, val_batch_size: int, num_workers: int,
               os_cache: bool) -> Loader:
    """A validation loader: `pipelines` over `val_path` (default data.val_path) in order, every sample."""
    return Loader(val_path, batch_size=val_batch_size, num_workers=num_workers, order=OrderOption.SEQUENTIAL,
                  os_cache=os_cache, drop_last=False, pipelines=pipelines, distributed=distributed)


@param("data.train_path")
def knn_val_loader(make_pipelines: Callable[[], dict], distributed: bool = False, *, train_path: str) -> KNNValLoader:
    """Validation batches, and `.bank`: the training set without augmentation (the kNN reference), each loader
    with its own `make_pipelines()`."""
    return KNNValLoader(val_loader(make_pipelines(), distributed),
                        bank=val_loader(make_pipelines(), distributed, val_path=train_path))
