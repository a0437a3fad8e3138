"""ResNet building blocks of the CIFAR layout (``resnet20``/``32``/``56``); the ImageNet
ResNets have their own, with torchvision's names (``downsample``), in :mod:`.resnet_imagenet`.

Every convolution is followed by a BatchNorm; the residual add is a plain ``+`` in ``forward``
and ReLUs are ``F.relu`` calls, so a ``torch.fx`` trace shows the dataflow directly. A
downsampling shortcut is a 1x1 convolution plus BatchNorm (option B of He et al. 2016) in
``shortcut``; an identity shortcut is an empty ``nn.Sequential`` (no nodes in the trace).

Prunable producers (outputs reach exactly one conv through BN and ReLU only): ``conv1`` of a
:class:`BasicBlock`.
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "add_basic_convs", "basic_forward", "make_shortcut"]


def make_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (empty Sequential) when shapes match, else ``0``: 1x1 conv, ``1``: BatchNorm."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the first carries the stride."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        add_basic_convs(self, in_planes, planes, stride)
        self.shortcut = make_shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        return basic_forward(self, x, self.shortcut(x))


def add_basic_convs(block: nn.Module, in_planes: int, planes: int, stride: int) -> None:
    """A basic block's layers (torchvision's names): 3x3 ``conv1`` carrying the stride, ``bn1``,
    3x3 ``conv2``, ``bn2``."""
    block.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    block.bn1 = nn.BatchNorm2d(planes)
    block.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    block.bn2 = nn.BatchNorm2d(planes)


def basic_forward(block: nn.Module, x: Tensor, identity: Tensor) -> Tensor:
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)``."""
    conv1, bn1, conv2, bn2 = (cast(nn.Module, getattr(block, n)) for n in ("conv1", "bn1", "conv2", "bn2"))
    return F.relu(bn2(conv2(F.relu(bn1(conv1(x))))) + identity)
