"""The cost term's part for channel-wise weight bits (``--granularity channel``, issue 17).

A channel-wise layer's weight gates are one row per output-channel group. Its discrete state is
``LayerState`` with ``w_bits_groups`` (the widths of its kept channels), and every gate's
gradient is the exact cost difference when that gate flips, the others held. Where that is zero
(a device that runs the layer at its widest group: one narrower group saves nothing) the
gradient falls back, in order, to the expected flip difference with the group's other gates and
the layer's activation gates drawn from their surrogate probabilities (``cost_term``'s flat
corner rule, per group), and then to the layer moving as one (every group at this group's
widths), shared among the groups by channel count. The fallbacks only apply where the exact
difference is zero, so costs that are sums over groups (BOPs, size, bit-serial) get the exact one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cost_models.base import LayerState
from hwsbs.quant.gates import bits_from_gates

from .channel_config import bit_histogram
from .flip_expectation import expected_flip_difference

__all__ = ["group_bits_from", "mixed_state", "channel_weight_deltas", "channel_act_delta"]

#: ``(group widths, a_bits) -> cost`` of one channel-wise layer with its current channels.
GroupCost = Callable[[tuple[int, ...], int], float]


def group_bits_from(bits: Sequence[int], flat_gates: Sequence[float], groups: int) -> tuple[int, ...]:
    """Each group's width from the flattened (groups, K-1) hard gates."""
    n = len(bits) - 1
    return tuple(bits_from_gates(bits, [v > 0.5 for v in flat_gates[g * n : (g + 1) * n]]) for g in range(groups))


def mixed_state(
    group_bits: Sequence[int], group_size: int, out_channels: int, pruned: Sequence[int], base: LayerState
) -> LayerState:
    """``base`` (a_bits, channels, ...) with weights at ``group_bits``: widest width and histogram."""
    gone = set(pruned)
    kept = [group_bits[c // group_size] for c in range(out_channels) if c not in gone]
    widest = max(kept) if kept else max(group_bits)
    hist = bit_histogram(group_bits, group_size, out_channels, pruned)
    return LayerState(
        widest, base.a_bits, base.kept_in, base.kept_out, base.w_group, base.act_float, base.fp_weights, hist
    )


def channel_weight_deltas(
    cost: GroupCost,
    bits: Sequence[int],
    group_bits: tuple[int, ...],
    flat_gates: Sequence[float],
    flat_probs: Sequence[float] | None,
    a_probs: Sequence[float] | None,
    a_bits: int,
    shares: Sequence[float],
) -> list[float]:
    """``dR/dg`` for every weight gate of a channel-wise layer, in (group, gate) order.

    Args:
        cost: the layer's cost at given group widths and activation width.
        bits: candidate widths.
        group_bits: each group's current width.
        flat_gates / flat_probs: the (groups, K-1) hard gates and their probabilities, flattened.
        a_probs: the activation gates' probabilities (None: activations not searched).
        a_bits: the current activation width.
        shares: each group's fraction of the layer's output channels.
    """
    n = len(bits) - 1
    out: list[float] = []
    for g in range(len(group_bits)):
        row = list(flat_gates[g * n : (g + 1) * n])
        probs = list(flat_probs[g * n : (g + 1) * n]) if flat_probs is not None else None

        def local(w: int, a: int, g: int = g) -> float:
            return cost(group_bits[:g] + (w,) + group_bits[g + 1 :], a)

        for j in range(n):
            flipped = [bits_from_gates(bits, [(f if i == j else v) > 0.5 for i, v in enumerate(row)]) for f in (1, 0)]
            delta = local(flipped[0], a_bits) - local(flipped[1], a_bits)
            if delta == 0.0 and probs is not None:  # flat: this group's other gates and the activation's
                delta = expected_flip_difference(local, bits, "w", j, probs, a_probs, group_bits[g], a_bits)
            if delta == 0.0 and probs is not None:  # still flat: the layer moving as one, this group's share
                joint = expected_flip_difference(
                    lambda w, a: cost((w,) * len(group_bits), a), bits, "w", j, probs, a_probs, group_bits[g], a_bits
                )
                delta = shares[g] * joint
            out.append(delta)
    return out


def channel_act_delta(
    cost: GroupCost,
    bits: Sequence[int],
    group_bits: tuple[int, ...],
    j: int,
    a_gates: Sequence[float],
    a_probs: Sequence[float] | None,
    flat_w_probs: Sequence[float] | None,
    fixed_a: int,
) -> float:
    """``dR/dg_j`` for activation gate ``j`` of a channel-wise layer (same fallbacks, weights per layer)."""
    flipped = [bits_from_gates(bits, [(f if i == j else v) > 0.5 for i, v in enumerate(a_gates)]) for f in (1, 0)]
    delta = cost(group_bits, flipped[0]) - cost(group_bits, flipped[1])
    if delta == 0.0:
        delta = expected_flip_difference(lambda w, a: cost(group_bits, a), bits, "a", j, None, a_probs, 0, fixed_a)
    if delta == 0.0 and flat_w_probs is not None:  # the weights moving as one: the groups' mean probabilities
        n, groups = len(bits) - 1, len(group_bits)
        mean = [sum(flat_w_probs[g * n + i] for g in range(groups)) / groups for i in range(n)]
        w_now = max(group_bits)
        delta = expected_flip_difference(
            lambda w, a: cost((w,) * groups, a), bits, "a", j, mean, a_probs, w_now, fixed_a
        )
    return delta
