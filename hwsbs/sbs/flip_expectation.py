"""The expected cost difference of one bit-gate flip, the other gates of the layer random.

Where a cost is flat at the gates' hard state (a100's roofline: 8/8, 4/8 and 8/4 cost the same),
the hard flip difference is zero; the expectation under the surrogate's own open probabilities
sees joint moves (8/8 -> 4/4). Used by the cost term and, per channel group, by channel_cost.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from hwsbs.quant.gates import bits_from_gates

__all__ = ["expected_flip_difference"]


def expected_flip_difference(
    cost: Callable[[int, int], float],
    bits: Sequence[int],
    family: str,
    j: int,
    w_probs: Sequence[float] | None,
    a_probs: Sequence[float] | None,
    fixed_w: int,
    fixed_a: int,
) -> float:
    """``E[C(g_j = 1) - C(g_j = 0)]`` with every other bit gate of the layer ~ Bernoulli(prob).

    Args:
        cost: ``(w_bits, a_bits) -> cost`` of the layer with its current channels.
        bits: candidate bit widths.
        family: ``"w"`` or ``"a"``: which family gate ``j`` belongs to.
        j: index of the gate within its family.
        w_probs / a_probs: open probabilities of the weight / activation gates (None: that
            family is not searched and stays at ``fixed_w`` / ``fixed_a``).
    """
    others: list[tuple[str, int, float]] = []
    for fam, probs in (("w", w_probs), ("a", a_probs)):
        for i, p in enumerate(probs or []):
            if not (fam == family and i == j):
                others.append((fam, i, float(p)))
    n_w, n_a = len(w_probs or []), len(a_probs or [])
    total = 0.0
    for pattern in itertools.product((0, 1), repeat=len(others)):
        weight = 1.0
        gates = {"w": [0] * n_w, "a": [0] * n_a}
        for (fam, i, p), g in zip(others, pattern):
            weight *= p if g else 1.0 - p
            gates[fam][i] = g
        diff = 0.0
        for flipped, sign in ((1, 1.0), (0, -1.0)):
            gates[family][j] = flipped
            w = bits_from_gates(bits, [g > 0 for g in gates["w"]]) if w_probs is not None else fixed_w
            a = bits_from_gates(bits, [g > 0 for g in gates["a"]]) if a_probs is not None else fixed_a
            diff += sign * cost(w, a)
        total += weight * diff
    return total
