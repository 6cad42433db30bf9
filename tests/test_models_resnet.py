"""ResNet-18/34/50: torchvision's parameter counts, both stems' output shapes, features mode, a bf16 train step."""

import pytest
import torch

from torchstrap_runtime.models import RESNETS, ResNet, build_model, resnet18, resnet50, stem_for


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, expected", [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)])
def test_parameter_counts_equal_torchvision(name, expected):
    assert count(RESNETS[name](num_classes=1000, stem="imagenet")) == expected
    # the CIFAR stem's 3x3 conv has 64 * 3 * (49 - 9) fewer weights
    assert count(RESNETS[name](num_classes=1000, stem="cifar")) == expected - 64 * 3 * 40


def test_output_shapes_of_both_stems_and_features_mode():
    torch.manual_seed(0)
    imagenet = resnet18(num_classes=7, stem="imagenet").eval()
    assert imagenet(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert imagenet.features(torch.randn(1, 3, 224, 224)).shape == (1, 512)
    x = torch.randn(2, 3, 32, 32)
    cifar = resnet18(num_classes=10, stem="cifar").eval()
    assert cifar(x).shape == (2, 10)
    # the CIFAR stem keeps 32 px to a 4x4 last stage, the ImageNet stem shrinks it to 1x1
    trunk = lambda m, x: m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    assert trunk(cifar, x).shape == (2, 512, 4, 4) and trunk(imagenet, x).shape == (2, 512, 1, 1)
    backbone = resnet50(num_classes=0, image_size=32)
    assert backbone.stem == "cifar" and backbone.out_features == 2048
    assert backbone.eval()(x).shape == (2, 2048)
    assert resnet50(image_size=224).stem == "imagenet" and stem_for(64) == "cifar" and stem_for(96) == "imagenet"
    assert build_model("resnet34", 5, image_size=32)(x).shape == (2, 5)
    with pytest.raises(ValueError, match="stem must be one of imagenet, cifar, got 'tiny'"):
        resnet18(stem="tiny")


def test_initialisation_is_torchvisions():
    torch.manual_seed(0)
    model = resnet50(zero_init_residual=True)
    conv = model.layer3[0].conv2  # kaiming normal, fan_out: std = sqrt(2 / (out_channels * 3 * 3))
    assert abs(conv.weight.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.05
    assert all(block.bn3.weight.abs().sum() == 0 for layer in (model.layer1, model.layer4) for block in layer)
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    plain = resnet18()
    assert torch.all(plain.layer1[0].bn2.weight == 1)
    assert plain.layer1[0].downsample is None and plain.layer2[0].downsample is not None


def test_train_step_under_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = resnet18(num_classes=10, stem="cifar")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = model.fc.weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert model.fc.weight.dtype == torch.float32 and not torch.equal(model.fc.weight, before)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert isinstance(model, ResNet)
