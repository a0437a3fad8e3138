"""Cycle models of bit-serial and bit-fusion accelerators; latency = cycles / clock_hz.

- Stripes (MICRO 2016): activations bit-serial, weights bit-parallel: cycles ~ a_bits.
- Loom (arXiv 1706.07853): both serial: convolutions ~ a_bits x w_bits, fully connected ~ w_bits.
  Stripes and Loom are sized by the bit-parallel MACs per cycle they match at baseline_bits.
- BISMO (FPL 2018): w_bits x a_bits x ceil(M/D_m) x ceil(K/D_k) x ceil(N/D_n).
- Bit Fusion (ISCA 2018, public simulator): perf = floor(max/max(a, min)) x floor(max/max(w, min));
  cycles = batch x ceil(oc/M) x OH x OW x KH x KW x ceil(ic/(N x perf)).

Operands narrower or wider than the array's [min_bits, max_bits] run at the nearest end (float
layers run as max_bits fixed point). Compute-bound by construction, as in the papers' models.
"""

from __future__ import annotations

from typing import cast

from cost_models.errors import CostModelError
from cost_models.precision import ExecutedPrecision, executed_precision
from hardware_profiles.cost_params import BitSerialParams
from hardware_profiles.schema import ArraySpec, HardwareProfile

from .base import CostModel, LayerShape, LayerState
from .registry import register_cost_model

__all__ = ["BitSerialCostModel", "layer_cycles", "REQUIRED_ARRAY_FIELDS"]

#: Array fields each variant reads (the error for a profile without them names them).
REQUIRED_ARRAY_FIELDS: dict[str, tuple[str, ...]] = {
    "stripes": ("equivalent_macs_per_cycle", "baseline_bits"),
    "loom": ("equivalent_macs_per_cycle", "baseline_bits"),
    "bismo": ("d_m", "d_k", "d_n"),
    "bitfusion": ("d_m", "d_k"),
}


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _gemm_dims(shape: LayerShape, kept_in: int, kept_out: int, batch: int) -> tuple[int, int, int, int]:
    """(groups, M per group, K per group, N): the layer as ``groups`` GEMMs of M x K by K x N."""
    kh, kw = shape.kernel_size
    if shape.kind == "matmul":  # every sample and head has its own K x N operand: one GEMM each
        return batch * shape.out_size[1], kept_out, kept_in, shape.out_size[0]
    n = batch * shape.out_size[0] * shape.out_size[1]
    if shape.is_depthwise:  # one channel per group: a 1 x (kh*kw) by (kh*kw) x N product each
        return kept_out, 1, kh * kw, n
    g = shape.groups
    return g, _ceil(kept_out, g), _ceil(kept_in, g) * kh * kw, n


# The array fields a variant reads are Optional in the schema; BitSerialCostModel checks that its
# variant's REQUIRED_ARRAY_FIELDS are set, so they are read here as ints.


def _cycles_stripes(array: ArraySpec, macs: int, w: int, a: int, is_linear: bool) -> int:
    lanes = cast(int, array.equivalent_macs_per_cycle) * array.baseline_bits  # 1-bit activation x full weight
    return _ceil(macs * a, lanes)


def _cycles_loom(array: ArraySpec, macs: int, w: int, a: int, is_linear: bool) -> int:
    p = array.baseline_bits
    eq_macs = cast(int, array.equivalent_macs_per_cycle)
    if is_linear:  # fully connected: weights serial, activations parallel
        return _ceil(macs * w, eq_macs * p)
    return _ceil(macs * w * a, eq_macs * p * p)


def layer_cycles(
    variant: str, array: ArraySpec, shape: LayerShape, state: LayerState, w: int, a: int, batch: int
) -> int:
    """Cycles ``shape`` takes on ``array`` at executed widths ``w``/``a`` for ``batch`` samples."""
    kin, kout = state.kept_in, state.kept_out
    if variant in ("stripes", "loom"):
        macs = batch * shape.macs(kin, kout)
        fn = _cycles_stripes if variant == "stripes" else _cycles_loom
        return fn(array, macs, w, a, shape.kind == "linear")
    if variant == "bismo":
        groups, m, k, n = _gemm_dims(shape, kin, kout, batch)
        d_m, d_k, d_n = cast(int, array.d_m), cast(int, array.d_k), cast(int, array.d_n)
        return groups * w * a * _ceil(m, d_m) * _ceil(k, d_k) * _ceil(n, d_n)
    # bitfusion: fused 2-bit bricks give `perf` low-precision products per fusion unit per cycle
    lo, hi = array.min_bits, array.max_bits
    d_m, d_k = cast(int, array.d_m), cast(int, array.d_k)
    perf = (hi // max(a, lo)) * (hi // max(w, lo))
    kh, kw = shape.kernel_size
    positions = shape.out_size[0] * shape.out_size[1]
    if shape.is_depthwise:  # output channels across the columns, one input channel each
        return batch * _ceil(kout, d_m) * positions * kh * kw * _ceil(1, d_k * perf)
    g = shape.groups
    per_group = batch * _ceil(_ceil(kout, g), d_m) * positions * kh * kw * _ceil(_ceil(kin, g), d_k * perf)
    return g * per_group


@register_cost_model("bit_serial")
class BitSerialCostModel(CostModel):
    """Latency in seconds of a bit-serial / bit-fusion array: cycles / clock_hz + overhead."""

    metric = "latency"
    unit = "s"

    def __init__(self, profile: HardwareProfile | None = None) -> None:
        super().__init__(profile)
        prof = self.require_profile()
        self.params = self.profile_params(BitSerialParams)
        variant = self.params.variant
        if prof.array is None:
            raise CostModelError(
                f"profile {prof.name!r}: array: the bit_serial model ({variant}) needs the accelerator's array "
                f"dimensions ({', '.join(REQUIRED_ARRAY_FIELDS[variant])}); this is a {prof.kind} profile without one"
            )
        missing = [f for f in REQUIRED_ARRAY_FIELDS[variant] if getattr(prof.array, f) is None]
        if missing:
            raise CostModelError(
                f"profile {prof.name!r}: array.{missing[0]}: required by the bit_serial variant {variant!r} "
                f"(needs {', '.join(REQUIRED_ARRAY_FIELDS[variant])})"
            )
        if prof.clock_hz is None:
            raise CostModelError(f"profile {prof.name!r}: clock_hz: required by the bit_serial model (cycles / clock)")
        self.array: ArraySpec = prof.array
        self.clock_hz: float = prof.clock_hz
        self._paths: dict[tuple[int, int], ExecutedPrecision] = {}

    def layer_cycles(self, shape: LayerShape, state: LayerState, batch: int = 1) -> int:
        """Cycles of the layer at the precision the array executes it at; with channel-wise bits,
        the sum over its weight widths (the array streams output channels, each group at its own)."""
        if state.w_bits_groups:
            return sum(self.layer_cycles(shape, s, batch) for s in state.bit_splits(shape))
        key = (state.w_bits, state.a_bits)
        ex = self._paths.get(key)
        if ex is None:  # memoised per bit pair: the profile is immutable
            ex = self._paths[key] = executed_precision(self.require_profile(), *key)
        return layer_cycles(self.params.variant, self.array, shape, state, ex.w_bits, ex.a_bits, batch)

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        cycles = self.layer_cycles(shape, state, batch)
        return cycles / self.clock_hz + self.params.per_layer_overhead_s
