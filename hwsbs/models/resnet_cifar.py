"""CIFAR ResNets of He et al. (2016), section 4.2: ``resnet20``, ``resnet32``, ``resnet56``.

A 3x3 stem of 16 channels, then three stages of ``n = (depth - 2) / 6`` basic blocks with 16, 32
and 64 channels (the first block of stages 2 and 3 has stride 2), global average pooling and a
linear classifier. Downsampling shortcuts are 1x1 conv + BN (option B) rather than the paper's
zero-padding option A, so every layer is a Conv2d or Linear; that adds about 2.8k parameters.

Module names: ``conv1``/``bn1`` (stem), ``layer{1,2,3}.{i}.conv1|bn1|conv2|bn2``,
``layer{2,3}.0.shortcut.0`` (conv) / ``.shortcut.1`` (BN), ``fc``.
Prunable producers: ``layer{s}.{i}.conv1`` for every block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsbs.errors import ModelError

from .blocks import BasicBlock
from .common import image_hw, init_weights
from .registry import register_model

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet56"]


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, width, stride))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(depth: int, num_classes: int, in_channels: int, image_size: int | Sequence[int]) -> nn.Module:
    image_hw(image_size)  # validates; the network itself works at any size thanks to global pooling
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, image_size: int | Sequence[int] = (32, 32)) -> nn.Module:
    """ResNet-20 for CIFAR (3 x 3 basic blocks, ~0.27M parameters)."""
    return _build(20, num_classes, in_channels, image_size)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, image_size: int | Sequence[int] = (32, 32)) -> nn.Module:
    """ResNet-32 for CIFAR (3 x 5 basic blocks, ~0.47M parameters)."""
    return _build(32, num_classes, in_channels, image_size)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, image_size: int | Sequence[int] = (32, 32)) -> nn.Module:
    """ResNet-56 for CIFAR (3 x 9 basic blocks, ~0.86M parameters)."""
    return _build(56, num_classes, in_channels, image_size)
