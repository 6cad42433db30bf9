"""The small models experiments start from, written here (no torchvision/timm dependency)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Flattens the input and applies `len(hidden)` Linear-BatchNorm-ReLU blocks, then a linear head.

    `num_classes=0` drops the head: the output is the last hidden layer (an embedding).
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (512, 256), num_classes: int = 10,
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.out_features = width
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a (projected when needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, three stages of BasicBlocks (strides 1, 2, 2), global pooling.

    `widths=(16, 32, 64), blocks=(1, 1, 1)` is a few seconds per epoch on digits on a CPU;
    `(64, 128, 256), (2, 2, 2)` is close to ResNet-18's CIFAR variant. `num_classes=0` returns embeddings.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64),
                 blocks: tuple[int, ...] = (1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, width = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stages.append(BasicBlock(width, w, stride=2 if (i > 0 and j == 0) else 1))
                width = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = width
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


def build_model(name: str, num_classes: int, image_size: int = 32, in_channels: int = 3) -> nn.Module:
    """`mlp` or `resnet-small` (also accepted: `resnet_small`)."""
    key = name.replace("_", "-").lower()
    if key == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes=num_classes)
    if key == "resnet-small":
        return ResNetSmall(num_classes=num_classes, in_channels=in_channels)
    raise ValueError(f"unknown model '{name}': expected 'mlp' or 'resnet-small'")


# ----------------------------------------------------------------------------- CoKe heads (idstcv/CoKe)

class CoKeProjector(nn.Module):
    """CoKe's projection head: Linear-BN-ReLU, Linear-BN-ReLU, Linear-BN (it replaces the backbone's fc).

    `hidden_dim` defaults to `in_dim` (2048 on a ResNet-50), `out_dim` is the embedding size (128).
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None):
        super().__init__()
        hidden = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_dim), nn.BatchNorm1d(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CoKePredictor(nn.Module):
    """CoKe's prediction head on the projection: Linear-BN-ReLU, Linear (no final BatchNorm)."""

    def __init__(self, dim: int = 128, hidden_dim: int = 2048):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CoKeHeads(nn.Module):
    """backbone -> projector -> (projection, prediction): what the CoKe criteria take as views/predictions.

    `backbone` maps images to [B, in_dim] features (e.g. a ResNet with its fc removed).
    """

    def __init__(self, backbone: nn.Module, in_dim: int, dim: int = 128, hidden_dim: int | None = None,
                 predictor: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projector = CoKeProjector(in_dim, dim, hidden_dim)
        self.predictor = CoKePredictor(dim, hidden_dim or in_dim) if predictor else None
        self.embedding_dim = dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projection = self.projector(self.backbone(x))
        return projection, (self.predictor(projection) if self.predictor is not None else projection)
