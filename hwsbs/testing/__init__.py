"""Reusable test helpers for hwsbs extensions (cost model plugins, custom profiles)."""

from __future__ import annotations

from .cost_models import (
    DEFAULT_BITS,
    ConformanceError,
    CostModelConformance,
    check_cost_model,
    default_shapes,
)

__all__ = ["DEFAULT_BITS", "ConformanceError", "CostModelConformance", "check_cost_model", "default_shapes"]
