"""Which precision a device really runs a requested (w_bits, a_bits) layer at.

Simulated quantisation is not deployment: a 4-bit layer on a GPU without INT4 tensor cores runs
on the INT8 path and costs what an 8-bit layer costs. Cost models ask this module first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cost_models.errors import CostModelError
from hardware_profiles.schema import FLOAT_BITS, HardwareProfile, PrecisionEntry

__all__ = ["ExecutedPrecision", "executed_precision", "candidate_precisions", "round_up"]


@dataclass(frozen=True)
class ExecutedPrecision:
    """The execution path chosen for a layer."""

    w_bits: int  # weight bits the device computes with
    a_bits: int  # activation bits the device computes with
    number_format: Literal["int", "float"]  # float: a floating-point path
    ops_per_s: float | None  # peak throughput of the path (None on bit-serial arrays: cycle models)
    channel_tile: int  # channels are rounded up to a multiple of this on the path
    native: bool  # True when the requested pair is executed as is


def round_up(count: int, tile: int) -> int:
    """``count`` rounded up to a multiple of ``tile`` (padding the hardware really computes)."""
    return -(-count // tile) * tile if tile > 1 else count


def _from_entry(profile: HardwareProfile, e: PrecisionEntry, native: bool) -> ExecutedPrecision:
    tile = e.channel_tile if e.channel_tile is not None else profile.channel_tile
    return ExecutedPrecision(e.w_bits, e.a_bits, e.number_format, e.ops_per_s, tile, native)


def _widest(entries: list[PrecisionEntry]) -> PrecisionEntry:
    return max(entries, key=lambda e: (e.w_bits * e.a_bits, e.w_bits + e.a_bits, e.ops_per_s))


def _float_entry(entries: list[PrecisionEntry]) -> PrecisionEntry:
    """Where a float layer runs: an FP32 (32/32) entry, else the widest float entry, else the widest."""
    for e in entries:
        if e.w_bits == FLOAT_BITS and e.a_bits == FLOAT_BITS:
            return e
    floats = [e for e in entries if e.number_format == "float"]
    return _widest(floats or entries)


def executed_precision(profile: HardwareProfile, w_bits: int, a_bits: int) -> ExecutedPrecision:
    """The path ``profile``'s device runs a ``w_bits``/``a_bits`` layer on.

    With ``precisions`` listed: the exact pair if executed; otherwise (``fallback: next_wider``)
    the narrowest executed pair at least as wide in both operands, or the widest pair when none
    is. Float (either operand 32 bits) runs on a 32/32 entry, else the widest float entry. With
    only a bit-serial ``array``: every width in [min_bits, max_bits] runs natively, narrower at
    min_bits, wider (float included) at max_bits.

    Raises:
        CostModelError: the profile lists neither precisions nor an array, or the pair is not
            executed and the profile's fallback is ``error``.
    """
    entries = profile.precisions
    is_float = w_bits >= FLOAT_BITS or a_bits >= FLOAT_BITS
    if entries:
        for e in entries:
            if e.w_bits == w_bits and e.a_bits == a_bits:
                return _from_entry(profile, e, native=True)
        if is_float:
            return _from_entry(profile, _float_entry(entries), native=False)
        if profile.fallback == "error":
            executed = ", ".join(f"{e.w_bits}/{e.a_bits}" for e in entries)
            raise CostModelError(
                f"profile {profile.name!r}: {w_bits}/{a_bits}-bit layers are not executed (executed: {executed}) "
                "and fallback is 'error'"
            )
        covering = [e for e in entries if e.w_bits >= w_bits and e.a_bits >= a_bits and e.number_format == "int"]
        covering = covering or [e for e in entries if e.w_bits >= w_bits and e.a_bits >= a_bits]
        if covering:
            best = min(covering, key=lambda e: (e.w_bits * e.a_bits, e.w_bits + e.a_bits, -e.ops_per_s))
            return _from_entry(profile, best, native=False)
        return _from_entry(profile, _widest(entries), native=False)
    if profile.array is not None:
        lo, hi = profile.array.min_bits, profile.array.max_bits
        w = min(max(w_bits, lo), hi)
        a = min(max(a_bits, lo), hi)
        native = (w, a) == (w_bits, a_bits)
        return ExecutedPrecision(w, a, "int", None, profile.channel_tile, native)
    raise CostModelError(
        f"profile {profile.name!r}: precisions/array: lists neither executed precisions nor a bit-serial array, "
        f"so a {w_bits}/{a_bits}-bit layer has no execution path"
    )


def candidate_precisions(profile: HardwareProfile, w_bits: int, a_bits: int) -> list[ExecutedPrecision]:
    """Every path that can run a ``w_bits``/``a_bits`` layer; a deployment picks the fastest.

    Usually the fastest is :func:`executed_precision`'s next wider path, but channel padding can
    make a wider path faster (a 3-channel stem padded to a 128-channel INT1 tile loses to INT4),
    and a runtime's kernel selection takes the faster one. Taking the minimum over this set also
    keeps costs monotone in bits: a wider request only removes candidates.

    Raises:
        CostModelError: as :func:`executed_precision`.
    """
    nominal = executed_precision(profile, w_bits, a_bits)
    entries = profile.precisions
    if not entries or profile.fallback == "error" or w_bits >= FLOAT_BITS or a_bits >= FLOAT_BITS:
        return [nominal]
    covering = [
        _from_entry(profile, e, native=(e.w_bits, e.a_bits) == (w_bits, a_bits))
        for e in entries
        if e.w_bits >= w_bits and e.a_bits >= a_bits
    ]
    return covering or [nominal]
