"""Binary threshold gates with a sigmoid surrogate gradient (method section 2).

Forward: ``g = 1[A > alpha]`` (hard). Backward with respect to the threshold:
``dg/dalpha = -sigma'((A - alpha) / tau) / tau``. The statistic ``A`` (a residual norm) is not
differentiated: gates learn only through their thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["threshold_gate", "surrogate_grad", "bits_from_gates", "open_level", "flip_levels"]


def surrogate_grad(statistic: Tensor, alpha: Tensor, tau: float) -> Tensor:
    """``d g / d alpha`` of the sigmoid surrogate: ``-sigma'((A - alpha)/tau) / tau``."""
    s = torch.sigmoid((statistic - alpha) / tau)
    return -(s * (1.0 - s)) / tau


class _ThresholdGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, statistic: Tensor, alpha: Tensor, tau: float) -> Tensor:
        ctx.save_for_backward(statistic, alpha)
        ctx.tau = tau
        return (statistic > alpha).to(statistic.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        statistic, alpha = ctx.saved_tensors
        g_alpha = grad * surrogate_grad(statistic, alpha, ctx.tau)
        # alpha may be a scalar shared by many gates (one pruning threshold per layer): reduce.
        if g_alpha.shape != alpha.shape:
            g_alpha = g_alpha.sum().reshape(alpha.shape)
        return None, g_alpha, None


def threshold_gate(statistic: Tensor, alpha: Tensor, tau: float) -> Tensor:
    """Hard gate ``1[statistic > alpha]`` whose gradient reaches ``alpha`` through the surrogate.

    Args:
        statistic: the residual norm(s) ``A``; detached inside (gates learn through alpha only).
        alpha: the learnable threshold (a scalar parameter, broadcast over ``statistic``).
        tau: surrogate temperature (> 0); smaller is sharper around ``A == alpha``.
    """
    return _ThresholdGate.apply(statistic.detach(), alpha, float(tau))


def bits_from_gates(bits: Sequence[int], open_gates: Sequence[bool]) -> int:
    """Nested gates: the bit width is the last candidate reached through consecutive open gates."""
    chosen = bits[0]
    for b, is_open in zip(bits[1:], open_gates):
        if not is_open:
            break
        chosen = b
    return chosen


def open_level(gates: Sequence[float]) -> int:
    """Index of the selected bit width of nested 0/1 gates: the number of consecutive open ones."""
    return next((i for i, g in enumerate(gates) if g < 0.5), len(gates))


def flip_levels(hard: list[float]) -> list[tuple[int, int]]:
    """For each gate, the selected width's index with that gate open and with it closed."""
    return [
        (open_level([*hard[:j], 1.0, *hard[j + 1 :]]), open_level([*hard[:j], 0.0, *hard[j + 1 :]]))
        for j in range(len(hard))
    ]
