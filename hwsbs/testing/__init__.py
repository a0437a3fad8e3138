"""Reusable test helpers for hwsbs extensions (cost model and search method plugins, custom profiles)."""

from __future__ import annotations

from .cost_models import DEFAULT_BITS, ConformanceError, CostModelConformance, check_cost_model, default_shapes
from .methods import METHOD_CHECK_OPTIONS, NEEDS_KEYS, check_search_method, method_needs

__all__ = [
    "DEFAULT_BITS",
    "METHOD_CHECK_OPTIONS",
    "NEEDS_KEYS",
    "ConformanceError",
    "CostModelConformance",
    "check_cost_model",
    "check_search_method",
    "default_shapes",
    "method_needs",
]
