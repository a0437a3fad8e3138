"""Channel-wise weight bits on devices that run a layer at one precision, or split it (issue 17).

A layer whose output-channel groups have different weight widths (``LayerState.w_bits_groups``)
is priced by the bit-serial models and by BOPs and size per group (their arrays stream channels,
so narrower channels are real savings). GPUs and CPUs run one kernel at one precision: the
roofline, energy and lut models price such a layer at its widest group, unless the profile
declares ``channel_split: {supported: true, per_split_overhead_s: ...}``, meaning the layer runs
as one sub-GEMM per width (each reading the whole input), summed, plus the overhead per extra one.
"""

from __future__ import annotations

from collections.abc import Callable

from hardware_profiles.schema import ChannelSplit, HardwareProfile

from .base import LayerShape, LayerState

__all__ = ["split_execution", "price_mixed"]


def split_execution(profile: HardwareProfile | None) -> ChannelSplit | None:
    """The profile's ``channel_split`` block when it declares split execution, else None."""
    split = getattr(profile, "channel_split", None)
    return split if split is not None and split.supported else None


def price_mixed(
    profile: HardwareProfile | None, shape: LayerShape, state: LayerState, price: Callable[[LayerState], float]
) -> float:
    """``price`` of the layer as the device runs it: at its widest group, or split per width.

    Args:
        profile: the device (its ``channel_split`` block decides).
        shape: the layer.
        state: its state; without ``w_bits_groups`` this is ``price(state)``.
        price: the cost of one sub-layer at one weight width (per-layer overheads excluded).
    """
    split = split_execution(profile)
    if not state.w_bits_groups or split is None:
        return price(state.widest)
    parts = state.bit_splits(shape)
    return sum(price(s) for s in parts) + split.per_split_overhead_s * (len(parts) - 1)
