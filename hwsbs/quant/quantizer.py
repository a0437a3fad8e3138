"""Uniform quantisation and the bit-sharing decomposition (method section 1).

Everything here works on normalised values z in [0, 1]. For ``k`` bits the step is
``s_k = 1 / (2^k - 1)``; because ``2^(2b) - 1 = (2^b - 1)(2^b + 1)`` the grid of ``b`` bits is a
subset of the grid of ``2b`` bits, so the lowest-bit value plus re-assignment offsets equals a
direct quantisation at the higher bit width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hwsbs.errors import ConfigError

__all__ = ["step_size", "round_ste", "quantize", "validate_bit_candidates", "bit_sharing_terms", "compose"]


def step_size(bits: int) -> float:
    """Quantisation step of a ``bits``-bit uniform grid on [0, 1]."""
    return 1.0 / (2**bits - 1)


class _RoundSTE(torch.autograd.Function):
    """round() forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest with a straight-through gradient."""
    return _RoundSTE.apply(x)


def quantize(z: Tensor, step: float) -> Tensor:
    """``D(z, s) = s * round(z / s)`` with a straight-through round."""
    return step * round_ste(z / step)


def validate_bit_candidates(bits: Sequence[int]) -> tuple[int, ...]:
    """Check that candidate bit widths start at >= 1 and double at each step (e.g. 2, 4, 8).

    Raises:
        ConfigError: naming the offending pair, since sharing needs each grid inside the next.
    """
    values = tuple(int(b) for b in bits)
    if len(values) < 1:
        raise ConfigError("--bits: at least one candidate bit width is needed")
    if values[0] < 1:
        raise ConfigError(f"--bits: bit widths must be >= 1, got {values[0]}")
    for lo, hi in zip(values, values[1:]):
        if hi != 2 * lo:
            raise ConfigError(
                f"--bits {','.join(map(str, values))}: each bit width must double the previous one "
                f"(got {lo} then {hi}); bit sharing needs the {lo}-bit grid inside the {hi}-bit grid"
            )
    if values[-1] > 16:
        raise ConfigError(f"--bits: at most 16 bits can be searched, got {values[-1]}")
    return values


def bit_sharing_terms(z: Tensor, bits: Sequence[int]) -> tuple[list[Tensor], list[Tensor]]:
    """Decompose ``z`` into the lowest-bit value and the re-assignment offsets.

    Returns:
        ``(terms, residual_inputs)``: ``terms[0] = D(z, s_b1)`` and ``terms[j] = eps_bj =
        D(z - z_b(j-1), s_bj)``; ``residual_inputs[j-1] = z - z_b(j-1)``, the quantisation error
        at the lower bit width that gate ``j`` looks at (one per gate, ``len(bits) - 1``).
    """
    base = quantize(z, step_size(bits[0]))
    terms = [base]
    residuals: list[Tensor] = []
    cumulative = base
    for b in bits[1:]:
        residual = z - cumulative
        eps = quantize(residual, step_size(b))
        residuals.append(residual)
        terms.append(eps)
        cumulative = cumulative + eps
    return terms, residuals


def compose(terms: Sequence[Tensor], gates: Sequence[Tensor]) -> Tensor:
    """``z_b1 + g_2 * (eps_2 + g_3 * (eps_3 + ...))``: the nested gating of method section 2."""
    if len(gates) != len(terms) - 1:
        raise ValueError(f"need {len(terms) - 1} gates for {len(terms)} terms, got {len(gates)}")
    inner = terms[-1]
    for j in range(len(terms) - 1, 0, -1):
        inner = gates[j - 1] * inner
        inner = terms[j - 1] + inner
    return inner
