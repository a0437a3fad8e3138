"""ImageNet ResNets of He et al. (2016): ``resnet18`` (basic blocks) and ``resnet50`` (bottlenecks).

7x7/2 stem, 3x3/2 max-pool, four stages of 64/128/256/512 (x4 for bottlenecks) channels, the
first block of stages 2-4 with stride 2 (on the 3x3 conv, ResNet v1.5), adaptive average pooling
and a linear classifier; small inputs (e.g. 32x32) still work because the pooling is adaptive.
Shortcuts that change shape are 1x1 conv + BN (option B), as in the usual ImageNet models, so the
parameter counts match the reference ones (11.69M and 25.56M at 1000 classes).

The layout and names are torchvision's (``torchvision.models.resnet18``/``resnet50``): the
state_dict has the same keys and shapes for any input size (``conv1`` reads ``in_channels``, ``fc``
has ``num_classes`` outputs), so a torchvision checkpoint loads with ``--checkpoint``. Module
names: ``conv1``/``bn1`` (stem), ``layer{1..4}.{i}.conv1|bn1|conv2|bn2[|conv3|bn3]``,
``layer{s}.0.downsample.0`` (conv) / ``.downsample.1`` (BN; ``downsample`` is None for identity
shortcuts), ``fc``. Unlike torchvision, ReLUs are ``F.relu`` calls and the residual add a plain
``+`` (no parameters, so the state_dict is unaffected; a ``torch.fx`` trace shows the dataflow).
Prunable producers: resnet18 ``layer{s}.{i}.conv1``; resnet50 ``layer{s}.{i}.conv1`` and ``.conv2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import add_basic_convs, basic_forward, make_shortcut
from .common import image_hw, init_weights
from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ImageNetResNet", "resnet18", "resnet50"]


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    """None (identity) when shapes match, else ``make_shortcut``'s 1x1 conv + BatchNorm (torchvision's)."""
    return make_shortcut(in_planes, out_planes, stride) if stride != 1 or in_planes != out_planes else None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions, the first carrying the stride (torchvision's ``BasicBlock``)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        add_basic_convs(self, in_planes, planes, stride)
        self.downsample = _downsample(in_planes, planes, stride)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # fixed at build time: fx-safe
        return basic_forward(self, x, identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, ResNet v1.5), 1x1 expand by 4 (torchvision's ``Bottleneck``)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = _downsample(in_planes, out_planes, stride)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)  # fixed at build time: fx-safe
        return F.relu(out + identity)


class ImageNetResNet(nn.Module):
    """ResNet with the ImageNet stem; ``block`` is :class:`BasicBlock` or :class:`Bottleneck`."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        stages = []
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3, image_size: int | Sequence[int] = (224, 224)) -> nn.Module:
    """ResNet-18 (2-2-2-2 basic blocks, 11.7M parameters at 1000 classes), torchvision's names."""
    image_hw(image_size)
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


@register_model("resnet50")
def resnet50(num_classes: int = 1000, in_channels: int = 3, image_size: int | Sequence[int] = (224, 224)) -> nn.Module:
    """ResNet-50 (3-4-6-3 bottleneck blocks, 25.6M parameters at 1000 classes), torchvision's names."""
    image_hw(image_size)
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
