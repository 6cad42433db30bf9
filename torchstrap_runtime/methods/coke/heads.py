"""CoKe's network heads (idstcv/CoKe): projector, predictor, and the backbone with both."""

from __future__ import annotations

import torch
from torch import nn

from ...models import forward_by_resolution


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

    `backbone` maps images to [B, in_dim] features (e.g. a ResNet with its fc removed). Called on a list of
    views (large views first, then small crops), the backbone runs once per resolution and the heads once
    per view (their BatchNorm statistics are per view, as in the authors' code); it then returns
    (projections, predictions), one [B, dim] per view.
    """

    def __init__(self, backbone: nn.Module, in_dim: int, dim: int = 128, hidden_dim: int | None = None,
                 predictor: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projector = CoKeProjector(in_dim, dim, hidden_dim)
        self.predictor = CoKePredictor(dim, hidden_dim or in_dim) if predictor else None
        self.embedding_dim = dim

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        projection = self.projector(features)
        return projection, (self.predictor(projection) if self.predictor is not None else projection)

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            return self.heads(self.backbone(x))
        outputs = [self.heads(f) for f in forward_by_resolution(self.backbone, list(x))]
        return [p for p, _ in outputs], [q for _, q in outputs]
