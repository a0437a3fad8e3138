"""Helpers shared by the built-in models: input-size handling and weight initialisation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from hwsbs.errors import ModelError

__all__ = ["image_hw", "init_weights"]


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` from an int or an ``(H, W)`` pair.

    Raises:
        ModelError: anything else, or a non-positive side.
    """
    if isinstance(image_size, int):
        hw: tuple[int, ...] = (image_size, image_size)
    else:
        try:
            hw = tuple(int(s) for s in image_size)
        except (TypeError, ValueError):
            raise ModelError(f"image_size: expected an int or (H, W), got {image_size!r}") from None
    if len(hw) != 2 or min(hw) <= 0:
        raise ModelError(f"image_size: expected an int or (H, W) of positive sides, got {image_size!r}")
    return hw[0], hw[1]


def init_weights(model: nn.Module) -> None:
    """He et al. (2015) init: Kaiming-normal convolutions (fan-out, ReLU gain), BatchNorm at
    identity (weight 1, bias 0), zero biases. Linear layers keep PyTorch's default, itself a
    Kaiming-uniform variant scaled for the classifier's fan-in."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
