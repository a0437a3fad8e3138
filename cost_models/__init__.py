"""Pluggable cost models: a layer's discrete state -> a cost on some hardware.

Built-ins register on import; third-party packages add theirs through the ``hwsbs.cost_models``
entry-point group. ``cost_model_for(profile, name=None)`` builds a profile's default model, or the
``--cost NAME`` override. This package depends on ``hardware_profiles`` only, never on ``hwsbs``.
"""

from __future__ import annotations

from .base import FLOAT_BITS, CostModel, LayerShape, LayerState
from .factory import cost_model_for, default_cost_model_name
from .registry import ENTRY_POINT_GROUP, build_cost_model, get_cost_model_class, list_cost_models, register_cost_model

# isort: split
from . import analytic, apb_cpu, bit_serial, energy, lut, roofline  # noqa: F401  (importing registers them)

__all__ = [
    "FLOAT_BITS",
    "CostModel",
    "LayerShape",
    "LayerState",
    "ENTRY_POINT_GROUP",
    "build_cost_model",
    "cost_model_for",
    "default_cost_model_name",
    "get_cost_model_class",
    "list_cost_models",
    "register_cost_model",
]
