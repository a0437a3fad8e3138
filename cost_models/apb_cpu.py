"""Single-thread CPU latency of APB layers: a bitwise binary GEMM plus a CSR sparse GEMM.

An APB layer (``state.fp_weights >= 0``) as ``hwsbs.apb.kernels`` runs it, per sample batch:

* binary part: ``M * N * ceil(K / 64) * a_bits`` word operations (AND + POPCNT + add per
  activation bit plane), ``M`` output positions, ``N`` kept outputs, ``K`` weights per row;
* outliers: ``M * fp_weights`` sparse multiply-adds.

Other layers run dense: FP32 GEMM when either operand is float, else the int8 path (narrower
integer widths included, as on oneDNN). The profile schema has no block for this model yet, so
the rates are defaults measured with ``benchmarks/binary_kernels.py --threads 1`` on the
development machine (AMD EPYC, shared and busy: treat them as orders of magnitude, and re-measure
for a target CPU).
"""

from __future__ import annotations

from .base import FLOAT_BITS, CostModel, LayerShape, LayerState
from .registry import register_cost_model

__all__ = ["APBCpuCostModel", "WORD_OPS_PER_S", "SPARSE_MACS_PER_S", "INT8_MACS_PER_S", "FP32_MACS_PER_S"]

#: 64-bit AND + POPCNT + accumulate per second (numba kernel, one thread; measured 2.2e9).
WORD_OPS_PER_S = 2.2e9
#: CSR multiply-adds per second (numba kernel, one thread; measured 6.3e8).
SPARSE_MACS_PER_S = 6.3e8
#: int8 GEMM multiply-adds per second (torch._int_mm / oneDNN, one thread; measured 1.1e11).
INT8_MACS_PER_S = 1.1e11
#: FP32 GEMM multiply-adds per second (torch.matmul / MKL, one thread; measured 2.2e10).
FP32_MACS_PER_S = 2.2e10


@register_cost_model("apb_cpu")
class APBCpuCostModel(CostModel):
    """Seconds per batch on one x86 core for APB layers (and dense int8 / FP32 for the others)."""

    metric = "latency"
    unit = "s"
    prices_apb = True

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        macs = batch * shape.macs(state.kept_in, state.kept_out)
        rate = FP32_MACS_PER_S if max(state.w_bits, state.a_bits) >= FLOAT_BITS else INT8_MACS_PER_S
        dense = macs / rate
        if state.fp_weights < 0 and state.w_bits != 1 or shape.kind == "matmul":
            return dense
        binary = self._binary(shape, state, macs)
        # a plain 1-bit layer runs on whichever path is faster; an APB layer needs the bitwise one
        return binary if state.fp_weights >= 0 else min(binary, dense)

    @staticmethod
    def _binary(shape: LayerShape, state: LayerState, macs: int) -> float:
        rows = max(state.kept_out, 1)
        per_row = shape.weight_count(state.kept_in, state.kept_out) // rows
        positions = macs // max(rows * per_row, 1)  # M: output positions times batch
        words = -(-per_row // 64)
        planes = min(state.a_bits, FLOAT_BITS)
        binary = positions * rows * words * planes / WORD_OPS_PER_S
        return binary + positions * max(state.fp_weights, 0) / SPARSE_MACS_PER_S
