"""Vision Transformers (Dosovitskiy et al., ICLR 2021) as timm/DeiT and DINO's vision_transformer.py build them:
patch embedding by a strided convolution, a cls token, learned position embeddings, pre-norm blocks (LayerNorm
eps 1e-6, multi-head attention with qkv bias, GELU MLP of ratio 4), a final LayerNorm and the cls token's
features. Same parameter names, shapes and counts as timm (ViT-S/16 without a head: 21,665,664), so timm's and
DINO's state dicts load.

    vit_small()                              # ViT-S/16 for 224 px images, 1000 classes
    vit_small(num_classes=0)                 # the 384 cls features (`out_features`): an SSL backbone
    vit_small(patch_size=4, image_size=32)   # 8 x 8 patches of 32 px images (CIFAR-sized)

Images of another size than `image_size` get bicubically interpolated position embeddings (DINO's local crops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping `patch_size` patches, each linearly projected to `embed_dim` (a strided convolution)."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"ViT: image size {tuple(x.shape[-2:])} is not a multiple of the patch size "
                             f"{self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)       # (B, patches, embed_dim)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection (with bias), scaled dot-product, output projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT: embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Linear - GELU - Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample with probability `p` in training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT classifier, or with `num_classes=0` the cls token's final features (`out_features` = embed_dim).

    `image_size` fixes the size of the learned position embedding (one per patch plus the cls token); other
    sizes (multiples of the patch) are served by interpolating it. `drop_path_rate` rises linearly over the
    blocks (stochastic depth, 0 by default; DINO trains its student with 0.1).
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, in_channels: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"ViT: image_size {image_size} is not a multiple of patch_size {patch_size}")
        if num_classes < 0:
            raise ValueError(f"ViT num_classes must be >= 0 (0 = features only), got {num_classes}")
        self.image_size, self.patch_size, self.embed_dim = image_size, patch_size, embed_dim
        self.out_features = embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.grid = image_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rate) for rate in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The position embedding for a `height` x `width` patch grid (bicubic interpolation of the learned one)."""
        if height == self.grid and width == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(height, width), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, height * width, -1)], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The cls token's features after the final LayerNorm, (B, embed_dim)."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        return self.norm(self.blocks(tokens))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _init_weights(module: nn.Module) -> None:
    """timm's and DINO's: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# (embed_dim, depth, num_heads) of the standard sizes
VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


def _vit(size: str, num_classes: int, patch_size: int, image_size: int, in_channels: int,
         drop_path_rate: float) -> VisionTransformer:
    embed_dim, depth, num_heads = VIT_SIZES[size]
    return VisionTransformer(image_size, patch_size, in_channels, num_classes, embed_dim, depth, num_heads,
                             drop_path_rate=drop_path_rate)


def vit_tiny(num_classes: int = 1000, patch_size: int = 16, image_size: int = 224, in_channels: int = 3,
             drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-Ti (DeiT-Tiny): width 192, 12 blocks, 3 heads."""
    return _vit("vit_tiny", num_classes, patch_size, image_size, in_channels, drop_path_rate)


def vit_small(num_classes: int = 1000, patch_size: int = 16, image_size: int = 224, in_channels: int = 3,
              drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-S (DeiT-Small): width 384, 12 blocks, 6 heads."""
    return _vit("vit_small", num_classes, patch_size, image_size, in_channels, drop_path_rate)


def vit_base(num_classes: int = 1000, patch_size: int = 16, image_size: int = 224, in_channels: int = 3,
             drop_path_rate: float = 0.0) -> VisionTransformer:
    """ViT-B: width 768, 12 blocks, 12 heads."""
    return _vit("vit_base", num_classes, patch_size, image_size, in_channels, drop_path_rate)


VITS = {"vit_tiny": vit_tiny, "vit_small": vit_small, "vit_base": vit_base}


def patch_size_for(image_size: int) -> int:
    """4 px patches for images up to 64 px (8 x 8 patches of a 32 px image), else 16 px."""
    return 4 if image_size <= 64 else 16
