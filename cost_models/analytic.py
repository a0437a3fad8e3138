"""Hardware-agnostic analytic costs: bit operations (the paper's metric) and weight storage."""

from __future__ import annotations

from .base import SCALE_BITS, CostModel, LayerShape, LayerState
from .registry import register_cost_model

__all__ = ["BopsCostModel", "SizeCostModel"]


@register_cost_model("bops")
class BopsCostModel(CostModel):
    """Bit operations: MACs x w_bits x a_bits with kept channel counts (SBS paper, section 4)."""

    metric = "bops"
    unit = "BOPs"

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        return float(batch * shape.macs(state.kept_in, state.kept_out) * state.w_bits * state.a_bits)


@register_cost_model("size")
class SizeCostModel(CostModel):
    """Weight storage in bits (batch independent), group scales included: what a flash- or DRAM-limited deployment pays."""

    metric = "size"
    unit = "bit"

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        weights = shape.weight_count(state.kept_in, state.kept_out) * state.w_bits
        return float(weights + state.scale_count(shape) * SCALE_BITS)
