"""Roofline latency: a layer takes the longer of its compute time and its memory time.

compute = 2 x MACs / (ops_per_s of the executed precision x compute efficiency)
memory  = bytes moved / (bandwidth x memory efficiency), bytes = weights at w bits + input
          activations at a bits + output activations at a bits
latency = max(compute, memory) + per-layer overhead

A weight-only layer (``act_float``: activations stay float) on a profile with
``weight_only_kernels`` runs as a weight-only kernel does: on the float path, its weights moving
packed at w bits plus their FP16 group scales, widened on chip. Without such kernels it runs (and
moves its weights) on the float path like any float layer: fewer weight bits save nothing there.

The executed precision comes from the profile (a 4-bit layer on H100 runs on the INT8 path and
costs what 8 bits cost): the fastest path at least as wide as the layer, normally the next wider
one. Channel counts are rounded up to the path's tile for the compute term.
"""

from __future__ import annotations

from cost_models.errors import CostModelError
from cost_models.precision import ExecutedPrecision, candidate_precisions, round_up
from hardware_profiles.cost_params import RooflineParams
from hardware_profiles.schema import HardwareProfile, MemoryLevel

from .base import SCALE_BITS, CostModel, LayerShape, LayerState
from .channel_split import price_mixed
from .registry import register_cost_model

__all__ = ["RooflineCostModel", "layer_bytes", "WEIGHT_ONLY_ACT_BITS"]

#: The float width a weight-only kernel widens its weights to (FP16).
WEIGHT_ONLY_ACT_BITS = 16


def layer_bytes(shape: LayerShape, kept_in: int, kept_out: int, w_bits: int, a_bits: int, batch: int) -> float:
    """Bytes a layer moves: its weights once, and per sample its inputs and outputs.

    Outputs are written at the activation width (requantised for the next layer, whose width is
    not known here). A matmul's second operand is an activation read per sample at ``w_bits``.
    """
    weight_bits = (shape.weight_count(kept_in, kept_out) + batch * shape.operand_count(kept_in, kept_out)) * w_bits
    act_bits = batch * (shape.input_count(kept_in) + shape.output_count(kept_out)) * a_bits
    return (weight_bits + act_bits) / 8.0


def _memory_level(profile: HardwareProfile, wanted: str | None) -> MemoryLevel:
    if not profile.memory:
        raise CostModelError(
            f"profile {profile.name!r}: memory: the roofline model needs at least one memory level "
            "with bandwidth_bytes_per_s"
        )
    if wanted is None:
        return profile.memory[0]
    for level in profile.memory:
        if level.name == wanted:
            return level
    known = ", ".join(m.name for m in profile.memory)
    raise CostModelError(
        f"profile {profile.name!r}: cost_model.memory_level: no memory named {wanted!r} (known: {known})"
    )


@register_cost_model("roofline")
class RooflineCostModel(CostModel):
    """Latency in seconds from peak throughput per executed precision and memory bandwidth."""

    metric = "latency"
    unit = "s"

    def __init__(self, profile: HardwareProfile | None = None) -> None:
        super().__init__(profile)
        prof = self.require_profile()
        self.params = self.profile_params(RooflineParams)
        if not prof.precisions:
            raise CostModelError(
                f"profile {prof.name!r}: precisions: the roofline model needs the executed (w_bits, a_bits) "
                "pairs and their ops_per_s"
            )
        self.memory = _memory_level(prof, self.params.memory_level)
        self.compute_efficiency = self.params.compute_efficiency or prof.efficiency.compute
        self.memory_efficiency = self.params.memory_efficiency or prof.efficiency.memory
        # Execution paths per requested (w_bits, a_bits); the profile is immutable.
        self._paths: dict[tuple[int, int], list[ExecutedPrecision]] = {}

    def _terms(
        self, ex: ExecutedPrecision, shape: LayerShape, state: LayerState, batch: int, packed_weights: bool = False
    ) -> tuple[float, float]:
        assert ex.ops_per_s is not None  # precisions entries always carry a throughput
        macs = batch * shape.macs(round_up(state.kept_in, ex.channel_tile), round_up(state.kept_out, ex.channel_tile))
        compute_s = 2.0 * macs / (ex.ops_per_s * self.compute_efficiency)
        if self.params.operands_at_executed_precision:
            w_bits, a_bits = ex.w_bits, ex.a_bits
        else:
            w_bits, a_bits = state.w_bits, state.a_bits
        if packed_weights:
            w_bits = state.w_bits  # a weight-only kernel reads packed weights and widens them on chip
        moved = layer_bytes(shape, state.kept_in, state.kept_out, w_bits, a_bits, batch)
        moved += state.scale_count(shape) * SCALE_BITS / 8.0  # grouped weights read their scales too
        memory_s = moved / (self.memory.bandwidth_bytes_per_s * self.memory_efficiency)
        return compute_s, memory_s

    def compute_and_memory_s(self, shape: LayerShape, state: LayerState, batch: int = 1) -> tuple[float, float]:
        """The two roofline terms (compute seconds, memory seconds) of the fastest executed path
        (channel-wise bits: at the widest group)."""
        state = state.widest
        key = (state.w_bits, state.a_bits)
        paths = self._paths.get(key)
        if paths is None:
            paths = self._paths[key] = candidate_precisions(self.require_profile(), *key)
        packed = state.act_float and self.params.weight_only_kernels and state.w_bits < WEIGHT_ONLY_ACT_BITS
        if packed:  # a weight-only kernel: the float path its weights are widened to, reading them packed
            wide = (WEIGHT_ONLY_ACT_BITS, max(state.a_bits, WEIGHT_ONLY_ACT_BITS))
            paths = self._paths.get(wide) or self._paths.setdefault(
                wide, candidate_precisions(self.require_profile(), *wide)
            )
        return min((self._terms(ex, shape, state, batch, packed) for ex in paths), key=max)

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        if not state.w_bits_groups:
            compute_s, memory_s = self.compute_and_memory_s(shape, state, batch)
            return max(compute_s, memory_s) + self.params.per_layer_overhead_s
        # channel-wise bits: the widest group, or one sub-GEMM per width (profile channel_split)
        mixed = price_mixed(self.profile, shape, state, lambda s: max(self.compute_and_memory_s(shape, s, batch)))
        return mixed + self.params.per_layer_overhead_s
