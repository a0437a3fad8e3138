"""Single-thread CPU latency of APB layers: a bitwise binary GEMM plus a CSR sparse GEMM.

An APB layer (``state.fp_weights >= 0``) as ``hwsbs.apb.kernels`` runs it, per layer call:

* binary part: ``per_call_s + M * N * ceil(K / 64) * a_bits / word_ops_per_s + M * K * a_bits /
  packed_bits_per_s`` (AND + POPCNT + add per activation bit plane, after packing those planes),
  with ``M`` output positions times batch, ``N`` kept outputs and ``K`` weights per row;
* outliers: ``per_call_s + M * fp_weights / macs_per_s + M * K / activations_per_s`` (CSR times
  the dense activations, which the kernel first transposes).

Other layers run dense: FP32 GEMM when either operand is float, else the int8 path (narrower
integer widths included, as on oneDNN), each ``per_call_s + MACs / macs_per_s``. Every figure
comes from the profile's ``binary_kernels`` block, measured on that CPU by
``hwsbs profiles measure-kernels`` (built in: ``x86-avx512``); a profile without one cannot use
this model.
"""

from __future__ import annotations

from hardware_profiles.schema import BinaryKernels, HardwareProfile, KernelSpeed

from .base import FLOAT_BITS, CostModel, LayerShape, LayerState
from .errors import CostModelError
from .registry import register_cost_model

__all__ = ["APBCpuCostModel", "dense_seconds", "binary_seconds", "sparse_seconds"]


def dense_seconds(speed: KernelSpeed, macs: float) -> float:
    """One dense GEMM call doing ``macs`` multiply-adds."""
    return speed.per_call_s + macs / speed.macs_per_s


def binary_seconds(kernels: BinaryKernels, positions: int, rows: int, per_row: int, a_bits: int) -> float:
    """One bitwise GEMM call: ``positions`` x ``per_row`` activations against ``rows`` packed rows."""
    speed = kernels.binary_gemm
    words = -(-per_row // 64)
    return (
        speed.per_call_s
        + positions * rows * words * a_bits / speed.word_ops_per_s
        + positions * per_row * a_bits / speed.packed_bits_per_s
    )


def sparse_seconds(kernels: BinaryKernels, positions: int, per_row: int, outliers: int) -> float:
    """One CSR outlier call: ``outliers`` weights against ``positions`` x ``per_row`` activations."""
    speed = kernels.sparse_gemm
    return speed.per_call_s + positions * outliers / speed.macs_per_s + positions * per_row / speed.activations_per_s


@register_cost_model("apb_cpu")
class APBCpuCostModel(CostModel):
    """Seconds per batch on one x86 core for APB layers (and dense int8 / FP32 for the others)."""

    metric = "latency"
    unit = "s"
    prices_apb = True

    def __init__(self, profile: HardwareProfile | None = None) -> None:
        super().__init__(profile)
        kernels = getattr(profile, "binary_kernels", None)
        if kernels is None:
            where = f"profile {profile.name!r}" if profile is not None else "no profile"
            raise CostModelError(
                f"cost model 'apb_cpu' needs measured kernel speeds: {where} has no binary_kernels block "
                "(measure this CPU with `hwsbs profiles measure-kernels --into PROFILE.yaml`, or use --hw x86-avx512)"
            )
        self.kernels: BinaryKernels = kernels

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        k = self.kernels
        macs = batch * shape.macs(state.kept_in, state.kept_out)
        is_float = max(state.w_bits, state.a_bits) >= FLOAT_BITS
        dense = dense_seconds(k.fp32_gemm if is_float else k.int8_gemm, macs)
        if state.fp_weights < 0 and state.w_bits != 1 or shape.kind == "matmul":
            return dense
        rows = max(state.kept_out, 1)
        per_row = shape.weight_count(state.kept_in, state.kept_out) // rows
        positions = macs // max(rows * per_row, 1)  # M: output positions times batch
        binary = binary_seconds(k, positions, rows, per_row, min(state.a_bits, FLOAT_BITS))
        if state.fp_weights > 0:
            binary += sparse_seconds(k, positions, per_row, state.fp_weights)
        # a plain 1-bit layer runs on whichever path is faster; an APB layer needs the bitwise one
        return binary if state.fp_weights >= 0 else min(binary, dense)
