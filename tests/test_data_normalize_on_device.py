"""NormalizeOnDevice after ToDevice gives the CPU pipeline's values in the training dtype and memory format
(here the device is the CPU: the same op runs on CUDA, where the template uses it)."""

import numpy as np
import pytest
import torch
from ffcv.fields.decoders import IntDecoder
from ffcv.transforms import Convert, NormalizeImage, ToDevice, ToTensor, ToTorchImage

from torchstrap_runtime.data import (Loader, NormalizeOnDevice, OrderOption, SimpleRGBImageDecoder, batch_device,
                                     write_dataset)

MEAN, STD = np.array([0.4914, 0.4822, 0.4465]) * 255, np.array([0.2470, 0.2435, 0.2616]) * 255


def batches(path, image_ops):
    loader = Loader(str(path), batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder(), *image_ops], "label": [IntDecoder(), ToTensor()]})
    return [batch[0] for batch in loader]


def test_matches_the_cpu_pipeline_in_dtype_and_memory_format(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 6, 3), dtype=np.uint8)
    path = write_dataset(tmp_path / "x.beton", images, np.arange(10))
    reference = batches(path, [NormalizeImage(MEAN, STD, np.float32), ToTensor(), ToTorchImage(), Convert(torch.float32)])
    device = torch.device("cpu")
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        for channels_last in (False, True):
            ops = [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=channels_last),
                   NormalizeOnDevice(MEAN, STD, dtype)]
            for expected, got in zip(reference, batches(path, ops), strict=True):
                assert got.dtype == dtype and got.shape == expected.shape == (len(got), 3, 8, 6)
                assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
                torch.testing.assert_close(got.float(), expected, atol=3 * tolerance, rtol=tolerance)
    with pytest.raises(ValueError, match="mean and std must be 3 numbers"):
        NormalizeOnDevice(MEAN[:2], STD)
    assert batch_device("cpu") == torch.device("cpu")
    assert batch_device("auto") == (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                                    else torch.device("cpu"))
