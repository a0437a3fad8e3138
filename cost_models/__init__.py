"""Pluggable cost models: a layer's discrete state -> a cost on some hardware.

Built-ins register on import; third-party packages add theirs through the ``hwsbs.cost_models``
entry-point group.
"""

from __future__ import annotations

from . import analytic  # noqa: F401  (registers bops, size)
from .base import FULL_PRECISION_BITS, CostModel, LayerShape, LayerState
from .registry import (
    ENTRY_POINT_GROUP,
    build_cost_model,
    get_cost_model_class,
    list_cost_models,
    register_cost_model,
)

__all__ = [
    "FULL_PRECISION_BITS",
    "CostModel",
    "LayerShape",
    "LayerState",
    "ENTRY_POINT_GROUP",
    "build_cost_model",
    "get_cost_model_class",
    "list_cost_models",
    "register_cost_model",
]
