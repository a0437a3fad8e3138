"""The gated bit-sharing quantiser as one autograd function (same values, fewer tensor passes).

``compose(bit_sharing_terms(z), gates)`` builds a graph of ~6K element-wise ops and keeps their
outputs for the backward pass. With hard gates its value is simply ``D(z, s_b)`` at the selected
bit width ``b`` (the decomposition is exact, method section 1), its gradient with respect to ``z``
is the identity (straight-through), and its gradient with respect to gate ``g_j`` is a linear
combination of the scalars ``<grad, eps_k>``. This function computes exactly that: the forward
quantises once at the chosen width, the backward recomputes the grids from ``z`` alone. The
reference implementation stays in :mod:`hwsbs.quant.quantizer`; tests check both agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .gates import open_level

__all__ = [
    "lower_grid_residuals",
    "sampled_residuals",
    "gated_quantize",
    "gate_grads",
    "sample_index",
    "ACT_STAT_SAMPLES",
]

# Activation statistics are means of |z - D(z, s_b)| over ~1e5-1e7 values; a fixed random sample
# of this many estimates each to ~0.3 % (residuals are bounded, CV ~0.6) at a fraction of the cost.
ACT_STAT_SAMPLES = 32768


def _grid(z: Tensor, bits: int) -> Tensor:
    """``D(z, s_b)`` without autograd, in place on one temporary (this runs on every activation)."""
    levels = float(2**bits - 1)
    with torch.no_grad():
        return (z * levels).round_().div_(levels)


@torch.no_grad()
def lower_grid_residuals(z: Tensor, bits: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """Mean |z - z_b| at every candidate but the widest (the gate statistics), and those grids."""
    grids = [_grid(z, b) for b in bits[:-1]]
    stats = torch.stack([F.l1_loss(g, z) for g in grids]) if grids else z.new_zeros(0)
    return stats, grids


@lru_cache(maxsize=64)
def sample_index(numel: int, samples: int, device: str) -> Tensor:
    # Seeded by the size alone: the same positions every step (reproducible, no RNG consumed),
    # scattered over the tensor (a stride could keep hitting the same image column).
    gen = torch.Generator().manual_seed(numel)
    return torch.randperm(numel, generator=gen)[:samples].sort().values.to(device)


_sample_index = sample_index  # the name hwsbs.sbs.curvature imports


@torch.no_grad()
def sampled_residuals(z: Tensor, bits: Sequence[int], samples: int = ACT_STAT_SAMPLES) -> Tensor:
    """The gate statistics of :func:`lower_grid_residuals` on a fixed random sample of ``z``.

    Tensors up to ``samples`` values are used whole (then the result equals
    ``lower_grid_residuals(z, bits)[0]`` exactly).
    """
    flat = z.detach().reshape(-1)
    if flat.numel() > samples:
        flat = flat.index_select(0, sample_index(flat.numel(), samples, str(flat.device)))
    if len(bits) < 2:
        return flat.new_zeros(0)
    return torch.stack([F.l1_loss(_grid(flat, b), flat) for b in bits[:-1]])


class _GatedQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, gates: Tensor, bits: tuple[int, ...], grids: list[Tensor]) -> Tensor:
        level = open_level(gates.tolist())
        out = grids[level] if level < len(grids) else _grid(z, bits[level])
        ctx.bits = bits
        ctx.save_for_backward(z, gates)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None, None]:
        z, gates = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return grad, None, None, None
        bits = ctx.bits
        # <grad, q_k> for every grid, then <grad, eps_k> = <grad, q_k> - <grad, q_(k-1)>.
        # q_k = round(z L_k) / L_k: dot with the integer levels and divide the scalar, so each
        # width costs two passes over z (scale-and-round, in place) and one fused dot product.
        flat_grad = grad.reshape(-1)
        with torch.no_grad():
            dots = torch.stack(
                [torch.dot(flat_grad, (z.reshape(-1) * float(2**b - 1)).round_()) / float(2**b - 1) for b in bits]
            )
        return grad, gate_grads(dots, gates), None, None


def gate_grads(dots: Tensor, gates: Tensor) -> Tensor:
    """The gradient of the nested gating with respect to its gates, from ``<grad, q_k>`` per width.

    Args:
        dots: ``<dL/dz_hat, D(z, s_bk)>`` for every candidate width ``k`` (one value each).
        gates: the hard 0/1 gates of the forward pass.
    """
    if dots.is_cpu and gates.is_cpu and dots.dtype in (torch.float32, torch.float64):
        return _host_gate_grads(dots, gates)
    eps_dots = dots[1:] - dots[:-1]
    g = gates.to(eps_dots.dtype)
    n = dots.numel() - 1
    grad_gates = torch.zeros(n, dtype=eps_dots.dtype, device=eps_dots.device)
    # z_hat = q_1 + sum_k (g_1...g_k) eps_k  =>  d z_hat / d g_j = sum_{k>=j} prod_{i<=k, i!=j} g_i eps_k
    for j in range(n):
        total = eps_dots.new_zeros(())
        prefix_without_j = eps_dots.new_ones(())
        for k in range(n):
            if k != j:
                prefix_without_j = prefix_without_j * g[k]
            if k >= j:
                total = total + prefix_without_j * eps_dots[k]
        grad_gates[j] = total
    return grad_gates.to(gates.dtype)


def _host_gate_grads(dots: Tensor, gates: Tensor) -> Tensor:
    """:func:`gate_grads` on CPU tensors with numpy scalars: the same IEEE operations of the dots'
    dtype in the same order (bit-identical), without ~25 tiny torch ops per call (issue 16)."""
    d = dots.detach().numpy()
    eps_dots = d[1:] - d[:-1]
    g = gates.detach().to(dots.dtype).numpy()
    n = d.shape[0] - 1
    grad_gates = np.zeros(n, dtype=d.dtype)
    one, zero = d.dtype.type(1.0), d.dtype.type(0.0)
    with np.errstate(all="ignore"):  # inf and NaN propagate silently, as in torch
        _nested_sums(eps_dots, g, grad_gates, one, zero)
    return torch.from_numpy(grad_gates).to(gates.dtype)


def _nested_sums(eps_dots: np.ndarray, g: np.ndarray, out: np.ndarray, one: np.generic, zero: np.generic) -> None:
    for j in range(out.shape[0]):
        total, prefix_without_j = zero, one
        for k in range(out.shape[0]):
            if k != j:
                prefix_without_j = prefix_without_j * g[k]
            if k >= j:
                total = total + prefix_without_j * eps_dots[k]
        out[j] = total


def gated_quantize(z: Tensor, gates: Tensor, bits: Sequence[int], grids: list[Tensor] | None = None) -> Tensor:
    """``compose(bit_sharing_terms(z, bits), gates)`` in one autograd node.

    Args:
        z: normalised values in [0, 1].
        gates: hard 0/1 gates, one per bit width above the lowest (differentiable).
        bits: candidate bit widths (doubling).
        grids: ``D(z, s_b)`` for all but the widest width, if already computed (reused); without
            them only the selected width's grid is computed.
    """
    return _GatedQuantize.apply(z, gates, tuple(bits), grids if grids is not None else [])
