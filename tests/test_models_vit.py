"""The ViT backbones: parameter names, shapes and counts of timm's / DINO's VisionTransformer (transcribed below
from their layer definitions), forward shapes at 224 px / 16 and 32 px / 4, attention as DINO computes it,
position-embedding interpolation, build_model, and a CPU training step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchstrap_runtime.models import MODELS, build_model
from torchstrap_runtime.vit import vit_base, vit_small, vit_tiny


def reference_shapes(embed: int, depth: int, patch: int, image: int, in_channels: int = 3, mlp_ratio: int = 4,
                     num_classes: int = 0) -> dict[str, tuple[int, ...]]:
    """timm's VisionTransformer parameters (class token, no register tokens, qkv bias, no pre-norm)."""
    hidden = embed * mlp_ratio
    shapes = {"cls_token": (1, 1, embed), "pos_embed": (1, (image // patch) ** 2 + 1, embed),
              "patch_embed.proj.weight": (embed, in_channels, patch, patch), "patch_embed.proj.bias": (embed,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (embed,), b + "norm1.bias": (embed,),
                       b + "attn.qkv.weight": (3 * embed, embed), b + "attn.qkv.bias": (3 * embed,),
                       b + "attn.proj.weight": (embed, embed), b + "attn.proj.bias": (embed,),
                       b + "norm2.weight": (embed,), b + "norm2.bias": (embed,),
                       b + "mlp.fc1.weight": (hidden, embed), b + "mlp.fc1.bias": (hidden,),
                       b + "mlp.fc2.weight": (embed, hidden), b + "mlp.fc2.bias": (embed,)})
    shapes.update({"norm.weight": (embed,), "norm.bias": (embed,)})
    if num_classes:
        shapes.update({"head.weight": (num_classes, embed), "head.bias": (num_classes,)})
    return shapes


def count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(torch.Size(s).numel() for s in shapes.values())


SIZES = {"vit_tiny": (vit_tiny, 192, 3), "vit_small": (vit_small, 384, 6), "vit_base": (vit_base, 768, 12)}
# timm's published counts: without a head, and with the 1000-class head
COUNTS = {"vit_tiny": (5_524_416, 5_717_416), "vit_small": (21_665_664, 22_050_664),
          "vit_base": (85_798_656, 86_567_656)}


@pytest.mark.parametrize("name", list(SIZES))
def test_parameter_names_shapes_and_counts_equal_timm(name):
    factory, embed, _ = SIZES[name]
    for num_classes, expected in zip((0, 1000), COUNTS[name]):
        with torch.device("meta"):   # shapes only: no memory, no initialisation cost
            model = factory(num_classes=num_classes)
        shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
        assert shapes == reference_shapes(embed, 12, 16, 224, num_classes=num_classes)
        assert sum(p.numel() for p in model.parameters()) == count(shapes) == expected
        assert model.out_features == embed


def test_patch_4_for_32_px_images():
    with torch.device("meta"):
        model = vit_small(patch_size=4, image_size=32, num_classes=0)
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    assert shapes == reference_shapes(384, 12, 4, 32)
    assert model.pos_embed.shape == (1, 65, 384)
    assert sum(p.numel() for p in model.parameters()) == 21_665_664 - 197 * 384 + 65 * 384 - 3 * 384 * 240


def test_forward_shapes():
    torch.manual_seed(0)
    with torch.no_grad():
        assert vit_tiny(num_classes=0).eval()(torch.randn(1, 3, 224, 224)).shape == (1, 192)
        assert vit_tiny(num_classes=7).eval()(torch.randn(1, 3, 224, 224)).shape == (1, 7)
        small = vit_small(num_classes=0, patch_size=4, image_size=32).eval()
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 384)
        assert small(torch.randn(2, 3, 16, 16)).shape == (2, 384)   # a local crop: interpolated positions
        assert vit_tiny(num_classes=0, patch_size=4, image_size=32, in_channels=1)(torch.randn(2, 1, 32, 32)).shape \
            == (2, 192)


def test_layer_norms_and_attention_as_dino_computes_them():
    torch.manual_seed(0)
    model = vit_tiny(num_classes=0, patch_size=4, image_size=16).double().eval()
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    # DINO's forward: prepare tokens, then each Block with its explicit attention (q k^T * scale, softmax).
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), tokens], dim=1) + model.pos_embed
    for block in model.blocks:
        b, n, c = tokens.shape
        heads = block.attn.num_heads
        qkv = block.attn.qkv(block.norm1(tokens)).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
        y = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        tokens = tokens + block.attn.proj(y)
        h = block.norm2(tokens)
        tokens = tokens + block.mlp.fc2(F.gelu(block.mlp.fc1(h)))
    expected = model.norm(tokens)[:, 0]
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-12)


def test_interpolated_position_embedding_is_the_learned_one_at_its_own_size():
    model = vit_tiny(num_classes=0, patch_size=4, image_size=32)
    assert model.position_embedding(8, 8) is model.pos_embed
    assert model.position_embedding(4, 6).shape == (1, 25, 192)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        vit_tiny(image_size=30, patch_size=4)


def test_build_model_knows_the_vits():
    assert {"vit_tiny", "vit_small", "vit_base"} <= set(MODELS)
    with torch.device("meta"):
        small32 = build_model("vit_small", num_classes=0, image_size=32)
        tiny224 = build_model("vit-tiny", num_classes=10, image_size=224)
    assert small32.patch_size == 4 and small32.out_features == 384 and small32.pos_embed.shape == (1, 65, 384)
    assert tiny224.patch_size == 16 and tiny224.head.out_features == 10
    with pytest.raises(ValueError, match="vit_base"):
        build_model("vit_huge", num_classes=10)


def test_training_step_on_cpu():
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=10, image_size=16)   # 4 x 4 patches of 4 px
    model.train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
