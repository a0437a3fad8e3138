"""Hardware-agnostic analytic costs: bit operations (the paper's metric) and weight storage."""

from __future__ import annotations

from .base import SCALE_BITS, CostModel, LayerShape, LayerState
from .registry import register_cost_model

__all__ = ["BopsCostModel", "SizeCostModel", "APB_VALUE_BITS", "apb_index_bits", "apb_size_bits"]

#: Bits of one full-precision APB weight: an FP32 value.
APB_VALUE_BITS = 32


@register_cost_model("bops")
class BopsCostModel(CostModel):
    """Bit operations: MACs x w_bits x a_bits with kept channel counts (SBS paper, section 4)."""

    metric = "bops"
    unit = "BOPs"

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        # channel-wise bits: every group's MACs at its own width (one term when all share w_bits)
        return float(
            sum(batch * shape.macs(s.kept_in, s.kept_out) * s.w_bits * s.a_bits for s in state.bit_splits(shape))
        )


@register_cost_model("size")
class SizeCostModel(CostModel):
    """Weight storage in bits (batch independent), group scales included: what a flash- or DRAM-limited deployment pays."""

    metric = "size"
    unit = "bit"
    prices_apb = True  # APB layers (state.fp_weights >= 0) are priced exactly: see apb_size_bits

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        if state.fp_weights >= 0:
            return float(apb_size_bits(shape, state))
        weights = sum(shape.weight_count(s.kept_in, s.kept_out) * s.w_bits for s in state.bit_splits(shape))
        return float(weights + state.scale_count(shape) * SCALE_BITS)


def apb_index_bits(shape: LayerShape, state: LayerState) -> int:
    """Bits of one full-precision weight's column index: ``ceil(log2(weights per output row))``."""
    per_row = shape.weight_count(state.kept_in, state.kept_out) // max(state.kept_out, 1)
    return max(1, (per_row - 1).bit_length())


def apb_size_bits(shape: LayerShape, state: LayerState) -> int:
    """An APB layer's storage: one bit per weight (the dense bit-packed matrix, outliers' bits
    included, since the kernel reads every one) plus value and column index per outlier."""
    weights = shape.weight_count(state.kept_in, state.kept_out)
    return weights + state.fp_weights * (APB_VALUE_BITS + apb_index_bits(shape, state))
