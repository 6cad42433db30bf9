"""The small models experiments start from, written here (no torchvision/timm dependency)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import param
from .vit import VITS, patch_size_for


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


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1) -> nn.Sequential:
    """Conv2d (no bias), BatchNorm2d, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + body(x)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The ResNet-9 of FFCV's CIFAR-10 example (after KakaoBrain's torchskeleton): conv 64, conv 5x5/2 128,
    a residual pair of 128-convs, conv 256 and 2x2 max-pool, a residual pair of 256-convs, conv 128 without
    padding, global max-pool, a bias-free linear head whose logits are scaled by 0.2 (`LOGIT_SCALE`).
    `num_classes=0` drops the head: the output is the 128 pooled features."""

    LOGIT_SCALE = 0.2

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 64),
            conv_bn_relu(64, 128, kernel_size=5, stride=2, padding=2),
            Residual(nn.Sequential(conv_bn_relu(128, 128), conv_bn_relu(128, 128))),
            conv_bn_relu(128, 256),
            nn.MaxPool2d(2),
            Residual(nn.Sequential(conv_bn_relu(256, 256), conv_bn_relu(256, 256))),
            conv_bn_relu(256, 128, padding=0),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.out_features = 128
        self.head = nn.Linear(128, num_classes, bias=False) if num_classes > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return features if self.head is None else self.head(features) * self.LOGIT_SCALE


def build_model(name: str, num_classes: int, image_size: int = 32, in_channels: int = 3, stem: str | None = None,
                zero_init_residual: bool = False) -> nn.Module:
    """`mlp`, `resnet-small` (also accepted: `resnet_small`), `resnet9` (FFCV's CIFAR example), `resnet18` /
    `resnet34` / `resnet50` or `vit_tiny` / `vit_small` / `vit_base`; `num_classes=0` gives the features (`.out_features` numbers) without a
    head. ResNets: `stem` 'cifar' or 'imagenet' (None: by image size), `zero_init_residual` starts each residual
    branch's last BatchNorm at 0. ViTs: 4 px patches for images up to 64 px, else 16 px (see vit.py)."""
    key = name.replace("_", "-").lower()
    if key.replace("-", "_") in VITS:
        return VITS[key.replace("-", "_")](num_classes=num_classes, patch_size=patch_size_for(image_size),
                                           image_size=image_size, in_channels=in_channels)
    if key == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes=num_classes)
    if key == "resnet-small":
        return ResNetSmall(num_classes=num_classes, in_channels=in_channels)
    if key == "resnet9":
        return ResNet9(num_classes=num_classes, in_channels=in_channels)
    if key in RESNETS:
        return RESNETS[key](num_classes=num_classes, stem=stem, image_size=image_size, in_channels=in_channels,
                            zero_init_residual=zero_init_residual)
    names = [f"'{model}'" for model in MODELS]
    raise ValueError(f"unknown model '{name}': expected {', '.join(names[:-1])} or {names[-1]}")


@param("model.stem")
@param("model.zero_init_residual")
def backbone(name: str, num_classes: int, image_size: int = 32, stem: str = "auto",
             zero_init_residual: bool = False) -> nn.Module:
    """`build_model` with the config's `model.stem` ('auto': by image size) and `model.zero_init_residual`: the
    network an experiment's models.py starts from; `num_classes=0` gives the features (`.out_features` numbers)."""
    return build_model(name, num_classes, image_size, stem=None if stem == "auto" else stem,
                       zero_init_residual=zero_init_residual)


# ---------------------------------------------------------------------- ResNet-18/34/50 (torchvision's architecture)
class ConvBNBlock(nn.Module):
    """A block of torchvision's ResNets: convolutions conv1, conv2, ... each followed by its batch norm bn1, bn2, ...
    and a ReLU, the shortcut added before the last ReLU (projected, 1x1 conv + BN, when the shape changes).
    `convs`: (in_channels, out_channels, kernel, stride) of each convolution, padded to keep the size."""

    expansion = 1  # output channels per `planes`

    def __init__(self, in_channels: int, planes: int, stride: int, convs: list[tuple[int, int, int, int]]):
        super().__init__()
        for i, (conv_in, conv_out, kernel, conv_stride) in enumerate(convs, 1):
            setattr(self, f"conv{i}", nn.Conv2d(conv_in, conv_out, kernel, conv_stride, kernel // 2, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(conv_out))
        self.depth = len(convs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(in_channels, planes * self.expansion, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return getattr(self, f"bn{self.depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.depth:
                out = self.relu(out)
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResidualBlock(ConvBNBlock):
    """torchvision's BasicBlock: two 3x3 convolutions, the first with the stride."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__(in_channels, planes, stride, [(in_channels, planes, 3, stride), (planes, planes, 3, 1)])


class Bottleneck(ConvBNBlock):
    """torchvision's Bottleneck (ResNet v1.5): 1x1 reduce, 3x3 with the stride, 1x1 expand (x4)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__(in_channels, planes, stride, [(in_channels, planes, 1, 1), (planes, planes, 3, stride),
                                                        (planes, planes * self.expansion, 1, 1)])


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut's 1x1 conv + BN when a block changes the shape, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


STEMS = ("imagenet", "cifar")


def stem_for(image_size: int) -> str:
    """'cifar' (3x3/1 conv, no max-pool) for images up to 64 px, else 'imagenet' (7x7/2 conv + 3x3/2 max-pool)."""
    return "cifar" if image_size <= 64 else "imagenet"


class ResNet(nn.Module):
    """torchvision's ResNet (same layers, names, parameter counts and initialisation), with a choice of stem.

    `stem`: 'imagenet' (7x7 stride-2 conv, then 3x3 stride-2 max-pool) or 'cifar' (3x3 stride-1 conv, no
    max-pool); None picks it from `image_size` (see stem_for). `num_classes=0` drops the classifier: the output
    is the pooled feature vector of `out_features` numbers (an SSL backbone). `zero_init_residual` starts each
    residual branch's last BN at zero, so every block starts as the identity.
    """

    def __init__(self, block: type, layers: tuple[int, ...], num_classes: int = 1000, stem: str | None = None,
                 image_size: int = 224, zero_init_residual: bool = False, in_channels: int = 3):
        super().__init__()
        stem = stem or stem_for(image_size)
        if stem not in STEMS:
            raise ValueError(f"ResNet stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if num_classes < 0:
            raise ValueError(f"ResNet num_classes must be >= 0 (0 = features only), got {num_classes}")
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        width = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(width, planes, stride=2 if (i > 0 and j == 0) else 1))
                width = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_features = width
        self.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ConvBNBlock):
                    nn.init.zeros_(m.last_bn().weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, out_features)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet18(num_classes: int = 1000, stem: str | None = None, image_size: int = 224,
             zero_init_residual: bool = False, in_channels: int = 3) -> ResNet:
    """ResNet-18 (BasicBlocks 2-2-2-2)."""
    return ResNet(ResidualBlock, (2, 2, 2, 2), num_classes, stem, image_size, zero_init_residual, in_channels)


def resnet34(num_classes: int = 1000, stem: str | None = None, image_size: int = 224,
             zero_init_residual: bool = False, in_channels: int = 3) -> ResNet:
    """ResNet-34 (BasicBlocks 3-4-6-3)."""
    return ResNet(ResidualBlock, (3, 4, 6, 3), num_classes, stem, image_size, zero_init_residual, in_channels)


def resnet50(num_classes: int = 1000, stem: str | None = None, image_size: int = 224,
             zero_init_residual: bool = False, in_channels: int = 3) -> ResNet:
    """ResNet-50 (Bottlenecks 3-4-6-3, v1.5: stride on the 3x3 conv)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, stem, image_size, zero_init_residual, in_channels)


RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
MODELS = ("mlp", "resnet-small", "resnet9", *RESNETS, *VITS)   # the names build_model knows


def same_size_runs(views: list[torch.Tensor]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive views with the same shape (2 x 224 then 6 x 96: two runs)."""
    runs, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i].shape[1:] != views[start].shape[1:]:
            runs.append((start, i))
            start = i
    return runs


def forward_by_resolution(module: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """`module` on every view, one call per run of same-sized views (as SwAV and DINO), one output per view."""
    outputs = []
    for start, end in same_size_runs(views):
        out = module(torch.cat(views[start:end]))
        outputs += list(out.split([v.shape[0] for v in views[start:end]]))
    return outputs


class EmbeddingNet(nn.Module):
    """A backbone (a model built with `num_classes=0`, exposing `out_features`) and a projection head
    to `embedding_dim`, L2-normalised. `hidden > 0` makes the head Linear-BN-ReLU-Linear (SSL style)."""

    def __init__(self, backbone: nn.Module, embedding_dim: int = 64, hidden: int = 0):
        super().__init__()
        width = getattr(backbone, "out_features", None)
        if not isinstance(width, int):
            raise ValueError(f"EmbeddingNet: the backbone {type(backbone).__name__} needs an int `out_features` "
                             f"(the size of its output), got {width!r}")
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"EmbeddingNet: embedding_dim must be an int >= 1, got {embedding_dim!r}")
        self.backbone = backbone
        self.embedding_dim = embedding_dim
        if hidden > 0:
            self.head = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, embedding_dim))
        else:
            self.head = nn.Linear(width, embedding_dim)

    def forward(self, x):
        """Unit embeddings of a batch; of a list of views, one [B, embedding_dim] per view (the backbone runs
        once per resolution)."""
        if isinstance(x, torch.Tensor):
            return F.normalize(self.head(self.backbone(x)), dim=1)
        return [F.normalize(self.head(f), dim=1) for f in forward_by_resolution(self.backbone, list(x))]
