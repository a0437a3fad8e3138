"""MobileNetV2 (Sandler et al. 2018), with a CIFAR stem for small inputs.

``features.0`` is the 3x3 stem (``conv``/``bn``), ``features.1``-``features.17`` the inverted
residual blocks, ``features.18`` the final 1x1 conv to 1280 channels, then global pooling,
dropout and ``classifier``. Each block has ``expand`` (1x1, absent when the expansion ratio is 1,
i.e. in ``features.1``), ``depthwise`` (3x3, groups = channels, carries the stride) and
``project`` (1x1, linear), each followed by its BatchNorm (``expand_bn``, ``depthwise_bn``,
``project_bn``); blocks with stride 1 and equal widths add their input with ``+``.

When the larger image side is <= 64 the stem has stride 1 and the second stage (24 channels)
stride 1 too, so a 32x32 input reaches the last stage at 4x4 instead of 1x1 (the usual CIFAR
variant); otherwise the ImageNet layout (total stride 32) is used.

Prunable producers: ``features.{2..17}.expand``; each feeds the depthwise conv (which then
keeps only the surviving channels) and through it the ``project`` conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import image_hw, init_weights
from .registry import register_model

__all__ = ["ConvBNReLU6", "InvertedResidual", "MobileNetV2", "mobilenetv2", "SMALL_INPUT_MAX"]

#: Inputs whose larger side is at most this use the CIFAR stem.
SMALL_INPUT_MAX = 64
# (expansion t, output channels c, repeats n, stride s) of the paper's Table 2.
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts to a multiple of ``divisor``, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Module):
    """``conv`` -> ``bn`` -> ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, plus the input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand: nn.Conv2d | None = None
        self.expand_bn: nn.BatchNorm2d | None = None
        if expand_ratio != 1:
            self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.expand is not None and self.expand_bn is not None:  # fixed at build time: fx-safe
            out = F.relu6(self.expand_bn(self.expand(out)))
        out = F.relu6(self.depthwise_bn(self.depthwise(out)))
        out = self.project_bn(self.project(out))
        if self.use_residual:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2; ``small_input`` selects the CIFAR stem (see the module docstring)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        stem = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, stem, 3, stride=1 if small_input else 2)]
        width = stem
        for stage, (t, c, n, s) in enumerate(_SETTINGS):
            out = _make_divisible(c * width_mult)
            stride = 1 if small_input and stage == 1 else s
            for i in range(n):
                layers.append(InvertedResidual(width, out, stride if i == 0 else 1, t))
                width = out
        layers.append(ConvBNReLU6(width, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 1000, in_channels: int = 3, image_size: int | Sequence[int] = (224, 224)
) -> nn.Module:
    """MobileNetV2 (width 1.0): the CIFAR stem up to 64x64 inputs (~2.2M parameters at 10
    classes), the ImageNet layout above (3.5M at 1000 classes)."""
    small = max(image_hw(image_size)) <= SMALL_INPUT_MAX
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, small_input=small)
