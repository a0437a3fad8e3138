"""Model zoo: built-in networks by name and user factories as ``package.module:factory``."""

from __future__ import annotations

from . import gpt, mobilenetv2, resnet_cifar, resnet_imagenet, small_cnn, vit  # noqa: F401  (register)
from .registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
