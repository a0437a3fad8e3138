"""Energy in joules: arithmetic per multiply-accumulate plus memory traffic per 64-bit access.

Integer arithmetic scales with bit width the way Horowitz (ISSCC 2014) describes: a multiplier's
energy grows with the product of its operand widths (relative to 8 x 8), an adder's linearly with
its width (interpolated between the 8- and 32-bit figures; the accumulator adds the w + a bit
product). Float paths use the FP16 or FP32 figures as they are. Memory energy is linear in the
bits moved: weights once per call, input and output activations per sample.
"""

from __future__ import annotations

from cost_models.errors import CostModelError
from cost_models.precision import ExecutedPrecision, executed_precision
from hardware_profiles.cost_params import EnergyParams
from hardware_profiles.schema import EnergyFigures, HardwareProfile

from .base import SCALE_BITS, CostModel, LayerShape, LayerState
from .channel_split import price_mixed
from .registry import register_cost_model

__all__ = ["EnergyCostModel", "mac_energy_pj"]

_PJ = 1e-12  # joules per picojoule


def int_add_pj(e: EnergyFigures, width: int) -> float:
    """An integer add of ``width`` bits: linear through the 8- and 32-bit figures (never below 0)."""
    slope = (e.int32_add_pj - e.int8_add_pj) / 24.0
    return max(0.0, e.int8_add_pj + slope * (width - 8))


def mac_energy_pj(e: EnergyFigures, w_bits: int, a_bits: int, number_format: str) -> float:
    """Energy of one multiply-accumulate at the executed widths, in picojoules."""
    if number_format == "float":
        if max(w_bits, a_bits) <= 16:
            return e.fp16_mult_pj + e.fp16_add_pj
        return e.fp32_mult_pj + e.fp32_add_pj
    mult = e.int8_mult_pj * (w_bits * a_bits) / 64.0
    return mult + int_add_pj(e, w_bits + a_bits)


@register_cost_model("energy")
class EnergyCostModel(CostModel):
    """Energy in joules from per-operation and per-access figures in the profile's ``energy`` block."""

    metric = "energy"
    unit = "J"

    def __init__(self, profile: HardwareProfile | None = None) -> None:
        super().__init__(profile)
        prof = self.require_profile()
        self.params = self.profile_params(EnergyParams)
        if prof.energy is None:
            raise CostModelError(
                f"profile {prof.name!r}: energy: the energy model needs per-operation and per-access "
                "energies (int8_mult_pj, sram_read_64b_pj, dram_read_64b_pj, ...)"
            )
        self.figures: EnergyFigures = prof.energy
        self._paths: dict[tuple[int, int], ExecutedPrecision] = {}

    def _access_pj(self, where: str) -> float:
        return self.figures.dram_read_64b_pj if where == "dram" else self.figures.sram_read_64b_pj

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        if state.w_bits_groups:  # the widest group, or one sub-GEMM per width (profile channel_split)
            return price_mixed(self.profile, shape, state, lambda s: self.layer_cost(shape, s, batch))
        key = (state.w_bits, state.a_bits)
        ex = self._paths.get(key)
        if ex is None:  # memoised per bit pair: the profile is immutable
            ex = self._paths[key] = executed_precision(self.require_profile(), *key)
        macs = batch * shape.macs(state.kept_in, state.kept_out)
        arithmetic = macs * mac_energy_pj(self.figures, ex.w_bits, ex.a_bits, ex.number_format)
        weight_bits = shape.weight_count(state.kept_in, state.kept_out) * ex.w_bits
        weight_bits += state.scale_count(shape) * SCALE_BITS
        act_bits = batch * (shape.input_count(state.kept_in) + shape.output_count(state.kept_out)) * ex.a_bits
        # a matmul's second operand is an activation: read per sample, from where activations live
        act_bits += batch * shape.operand_count(state.kept_in, state.kept_out) * ex.w_bits
        memory = weight_bits / 64.0 * self._access_pj(self.params.weights_from) + act_bits / 64.0 * self._access_pj(
            self.params.activations_from
        )
        return (arithmetic + memory) * _PJ
