"""MobileNetV2 (Sandler et al. 2018), with a CIFAR stem for small inputs.

The layout and names are torchvision's (``torchvision.models.mobilenet_v2``), so a torchvision
checkpoint loads with ``--checkpoint``: ``features.0`` is the 3x3 stem (``0`` conv, ``1`` BN),
``features.1``-``features.17`` the inverted residual blocks, ``features.18`` the final 1x1 conv
to 1280 channels (``0``/``1``), then global pooling and ``classifier`` (``0`` dropout, ``1``
linear). Each block's ``conv`` is a Sequential: ``conv.0`` the 1x1 expansion (``0`` conv, ``1``
BN; absent when the expansion ratio is 1, i.e. in ``features.1``, where ``conv.0`` is the
depthwise stage), then the 3x3 depthwise stage (``conv.1``: ``0`` conv with groups = channels,
carrying the stride, ``1`` BN), the linear 1x1 projection ``conv.2`` and its BN ``conv.3``
(``conv.0.0``, ``conv.1``, ``conv.2`` in ``features.1``); blocks with stride 1 and equal widths
add their input with ``+``. Unlike torchvision, ReLU6 is an ``F.relu6`` call, not a module
(no parameters, so the state_dict is the same; a ``torch.fx`` trace shows the dataflow).

When the larger image side is <= 64 the stem has stride 1 and the second stage (24 channels)
stride 1 too, so a 32x32 input reaches the last stage at 4x4 instead of 1x1 (the usual CIFAR
variant); otherwise the ImageNet layout (total stride 32) is used. Strides hold no weights, so
the state_dict keys and shapes are torchvision's either way.

Prunable producers: the expansions ``features.{2..17}.conv.0.0``; each feeds the depthwise conv
``conv.1.0`` (which then keeps only the surviving channels) and through it the projection ``conv.2``.
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


class ConvBNReLU6(nn.Sequential):
    """``0`` conv (no bias) -> ``1`` BatchNorm -> ReLU6: torchvision's ``Conv2dNormActivation``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
        )
        super().__init__(conv, nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(super().forward(x))


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, plus the input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:  # fixed at build time: fx-safe
            return x + self.conv(x)
        return self.conv(x)


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
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, stem, 3, stride=1 if small_input else 2)]
        width = stem
        for stage, (t, c, n, s) in enumerate(_SETTINGS):
            out = _make_divisible(c * width_mult)
            stride = 1 if small_input and stage == 1 else s
            for i in range(n):
                layers.append(InvertedResidual(width, out, stride if i == 0 else 1, t))
                width = out
        layers.append(ConvBNReLU6(width, self.last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)
        return self.classifier(x)


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 1000, in_channels: int = 3, image_size: int | Sequence[int] = (224, 224)
) -> nn.Module:
    """MobileNetV2 (width 1.0): the CIFAR stem up to 64x64 inputs (~2.2M parameters at 10
    classes), the ImageNet layout above (3.5M at 1000 classes)."""
    small = max(image_hw(image_size)) <= SMALL_INPUT_MAX
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels, small_input=small)
