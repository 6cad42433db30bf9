"""The fast settings: bfloat16/float16 autocast, channels_last, torch.compile and its mode, fused optimizers,
cudnn.benchmark, page-locked non-blocking copies, image normalisation on the device. Each is checked on the
CPU where it means something there; the `gpu` tests run them on CUDA (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchstrap_runtime import device as dev
from torchstrap_runtime.config import set_values
from torchstrap_runtime.errors import UserError
from torchstrap_runtime.normalize import ImageNormalizer
from torchstrap_runtime.optim import build_optimizer

from test_trainer import TinyTrainer, config, make_batches  # noqa: F401  (config: autouse fixture)

MEAN, STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class ConvTrainer(TinyTrainer):
    """A small conv net, so that channels_last and cuDNN have something to act on; records what a step sees."""

    def initialize_model(self) -> None:
        self.model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))

    def train_step(self) -> torch.Tensor:
        inputs, targets = self.to_device(self.data)
        with self.autocast():
            outputs = self.model(inputs)
            loss = self.criterion(outputs, targets)
        self.seen = (inputs.device, inputs.is_contiguous(memory_format=torch.channels_last), outputs.dtype)
        return loss


def test_bfloat16_autocast_and_channels_last_reach_the_step():
    set_values({"logging.run_id": "bf16", "training.dtype": "bfloat16", "training.channels_last": True,
                "training.epochs": 1})
    trainer = ConvTrainer()
    record = trainer.run()
    assert trainer.seen == (torch.device("cpu"), True, torch.bfloat16)
    assert trainer.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(torch.tensor(record["train_loss"]))


def test_float16_is_refused_on_the_cpu_in_one_sentence():
    set_values({"logging.run_id": "fp16", "training.dtype": "float16", "training.device": "cpu"})
    with pytest.raises(UserError, match=r"^training.dtype float16 needs a CUDA GPU .*; use bfloat16 or float32$"):
        ConvTrainer()


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimizers_step_like_the_unfused_ones(name):
    weights = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    grads = [torch.randn(5, 4, generator=torch.Generator().manual_seed(step)) for step in range(3)]
    stepped = {}
    for fused in (False, True):
        param = nn.Parameter(weights.clone())
        optimizer = build_optimizer(name, [{"params": [param], "weight_decay": 5e-4}], lr=0.01, fused=fused)
        assert optimizer.defaults.get("fused") is (True if fused else None)
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        stepped[fused] = param.detach()
    torch.testing.assert_close(stepped[True], stepped[False], rtol=1e-5, atol=1e-6)
    assert not torch.equal(stepped[True], weights)


def test_the_trainer_builds_the_fused_optimizer():
    set_values({"logging.run_id": "fused", "optimizer.name": "adamw", "optimizer.fused": True, "training.epochs": 1})
    trainer = TinyTrainer()
    assert trainer.optimizer.defaults["fused"] is True
    assert torch.isfinite(torch.tensor(trainer.run()["train_loss"]))


def test_fused_lars_is_refused_in_one_sentence():
    with pytest.raises(UserError, match=r"^optimizer.fused is true but torch has no fused kernel for optimizer.name "
                                        r"'lars'; use one of sgd, adam, adamw or set optimizer.fused false$"):
        build_optimizer("lars", [{"params": [nn.Parameter(torch.zeros(2))]}], lr=0.1, fused=True)


@pytest.mark.parametrize("mode, key", [("reduce-overhead", "triton.cudagraphs"),
                                       ("max-autotune-no-cudagraphs", "max_autotune")])
def test_compile_mode_reaches_torch_compile(mode, key):
    set_values({"logging.run_id": "compiled", "training.compile": True, "training.compile_mode": mode})
    trainer = TinyTrainer()  # compiled lazily: nothing is compiled before the first step
    assert trainer.model.get_compiler_config()[key] is True
    assert trainer.raw_model is trainer.model._orig_mod


def test_a_wrong_compile_mode_is_one_sentence(capsys):
    from torchstrap_runtime.config import load_config

    with pytest.raises(SystemExit) as stopped:
        load_config(["--training.compile_mode=fastest"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("config error: training.compile_mode: got 'fastest', expected one of 'default', "
                                       "'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs' (on the "
                                       "command line)\n")


def test_cudnn_benchmark_follows_the_setting():
    try:
        for wanted in (True, False):
            set_values({"logging.run_id": f"cudnn-{wanted}", "training.cudnn_benchmark": wanted})
            TinyTrainer()
            assert torch.backends.cudnn.benchmark is wanted
    finally:
        torch.backends.cudnn.benchmark = False


def test_copies_to_the_cpu_leave_host_tensors_alone():
    x = torch.arange(6.0)
    assert dev.to_device_async(x, torch.device("cpu"), pin=True) is x  # no page-locking without CUDA


def test_image_normalizer_matches_the_formula_in_dtype_and_memory_format():
    images = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = (images.float() - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        for channels_last in (False, True):
            batch = images.contiguous(memory_format=torch.channels_last) if channels_last else images
            got = ImageNormalizer(MEAN, STD, dtype)(batch)
            assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last) == channels_last
            torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=3 * tolerance)
    with pytest.raises(ValueError, match="mean and std must be 3 numbers"):
        ImageNormalizer(MEAN, (1.0, 0.0, 1.0))


# ---------------------------------------------------------------- on CUDA
@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_fast_setting_trains_on_cuda(dtype):
    set_values({"logging.run_id": f"gpu-{dtype}", "training.device": "cuda", "training.dtype": dtype,
                "training.channels_last": True, "training.compile": True, "training.cudnn_benchmark": True,
                "optimizer.fused": True, "training.pin_memory": True, "training.epochs": 2})
    try:
        trainer = ConvTrainer()
        record = trainer.run()
    finally:
        torch.backends.cudnn.benchmark = False
    assert trainer.seen[0].type == "cuda" and trainer.seen[1] and trainer.seen[2] == getattr(torch, dtype)
    assert trainer.scaler.is_enabled() == (dtype == "float16")
    assert torch.isfinite(torch.tensor(record["train_loss"])) and 0 <= record["val_top1"] <= 1


@pytest.mark.gpu
@cuda
def test_pinned_copies_do_not_block_the_host():
    batch = (torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.zeros(64, dtype=torch.long))
    torch.cuda.set_sync_debug_mode("error")
    try:
        inputs, targets = dev.inputs_and_targets(batch, torch.device("cuda"), True, pin=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert inputs.is_cuda and inputs.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(inputs.cpu(), batch[0])


@pytest.mark.gpu
@cuda
def test_image_normalizer_on_cuda_matches_the_cpu():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    normalize = ImageNormalizer(MEAN, STD, torch.bfloat16)
    torch.testing.assert_close(normalize(images.cuda()).cpu(), normalize(images))
