"""``vit_tiny``: a small Vision Transformer for CIFAR-sized images (Dosovitskiy et al., 2021).

Conv2d patch embedding, learned position embeddings, pre-norm encoder blocks
(``nn.MultiheadAttention`` and a Linear-GELU-Linear MLP), mean pooling over the patch tokens and a
Linear head. The defaults (width 64, 4 blocks, 4 heads) train on two CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from hwsbs.errors import ModelError

from .common import image_hw
from .registry import register_model

__all__ = ["MLP", "EncoderBlock", "VisionTransformer", "default_patch", "vit_tiny"]


class MLP(nn.Module):
    """The transformer feed-forward: Linear, GELU, Linear (fc1 -> fc2 is a prunable pair)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio * width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def default_patch(height: int, width: int) -> int:
    """Patch side: about an 8x8 grid on images of 32 px and more (4 at 32x32), 2 px on smaller ones
    (a 4x4 grid on 8x8 digits); always a divisor of both sides, so no pixel is dropped."""
    target = max(2, min(height, width) // 8)
    common = math.gcd(height, width)
    return max(d for d in range(1, min(target, common) + 1) if common % d == 0)


class VisionTransformer(nn.Module):
    """Patch embedding, position embeddings, encoder blocks, mean-pooled LayerNorm and head."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        width: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
        patch: int | None = None,
    ) -> None:
        super().__init__()
        h, w = image_hw(image_size)
        patch = patch or default_patch(h, w)
        if h % patch or w % patch:
            raise ModelError(f"vit: patch size {patch} does not divide the image size {h}x{w}")
        if width % heads:
            raise ModelError(f"vit: width {width} is not a multiple of the {heads} heads")
        self.patch = patch  # patch side in pixels
        self.patch_embed = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch), width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # ViT's init: small against the patch features
        self.blocks = nn.Sequential(*(EncoderBlock(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, patches, width)
        return self.head(self.norm(self.blocks(tokens)).mean(1))


@register_model("vit_tiny")
def vit_tiny(num_classes: int = 10, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """A 4-block, width-64 ViT; the patch size follows the image size (:func:`default_patch`)."""
    return VisionTransformer(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
