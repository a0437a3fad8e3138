"""Example hwsbs cost model plugin: bytes moved to and from DRAM per layer."""

from __future__ import annotations

from cost_models import CostModel, LayerShape, LayerState, register_cost_model
from cost_models.precision import executed_precision
from hwsbs.errors import CostModelError

__all__ = ["DramTrafficCostModel"]


@register_cost_model("dram_traffic")
class DramTrafficCostModel(CostModel):
    """DRAM bytes per layer call: weights once, activations per sample (hardware-aware widths)."""

    metric = "dram_traffic"
    unit = "B"
    monotone = True

    def _activations_on_chip(self) -> bool:
        if self.profile is None:
            return False
        options = self.profile.extensions.get(self.name, {})
        value = options.get("activations_on_chip", False)
        if not isinstance(value, bool):
            raise CostModelError(
                f"profile {self.profile.name!r}: extensions.{self.name}.activations_on_chip: expected true or false"
            )
        return value

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        w_bits, a_bits = state.w_bits, state.a_bits
        if self.profile is not None:  # a device moves operands in the format it computes in
            ex = executed_precision(self.profile, w_bits, a_bits)
            w_bits, a_bits = ex.w_bits, ex.a_bits
        bits = shape.weight_count(state.kept_in, state.kept_out) * w_bits
        if not self._activations_on_chip():
            bits += batch * (shape.input_count(state.kept_in) + shape.output_count(state.kept_out)) * a_bits
        return bits / 8.0
