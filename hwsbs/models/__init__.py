"""Model zoo: built-in networks by name and user factories as ``package.module:factory``."""

from __future__ import annotations

from . import mobilenetv2, resnet_cifar, resnet_imagenet, small_cnn  # noqa: F401  (register)
from .registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
