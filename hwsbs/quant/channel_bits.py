"""Channel-wise weight bits (``--granularity channel``, issue 17): weight gates per output-channel group.

With channel granularity a searched layer's weight thresholds ``w_theta`` and calibration
scales ``w_scale`` have one row per group of ``group_size`` output channels (the pruning
groups), so every group picks its own weight width from its own residual statistic (mean
``|z - D(z, s_b)|`` over the group's weights). Activations stay per layer: one input tensor.
The bit-sharing decomposition is unchanged per group: with hard gates a group's value is
``D(z, s_b)`` at its width, and its gate gradients are those of :func:`hwsbs.quant.fused.gate_grads`
on the group's own ``<grad, q_k>``. Both quantiser paths (fused and reference) run this code, so
they agree exactly. In fixed mode ``fixed_row_bits`` gives each output row its width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from .fused import _grid, lower_grid_residuals
from .gates import bits_from_gates, threshold_gate
from .quantizer import quantize, round_ste, step_size
from .scales import EPS

if TYPE_CHECKING:
    from .layers import SBSLayerMixin

__all__ = [
    "GRANULARITIES",
    "enable_channel_bits",
    "disable_channel_bits",
    "group_residuals",
    "group_gated_quantize",
    "batched_gate_grads",
    "weight_residuals",
    "relative_statistics",
    "channel_gated_weight",
    "current_group_bits",
    "fixed_weight_grid",
]

#: ``SearchConfig.granularity`` values: one weight width per layer, or per output-channel group.
GRANULARITIES = ("layer", "channel")


def _row_view(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def _group_sum(per_row: Tensor, group_size: int) -> Tensor:
    """Sum of ``per_row`` (rows, ...) over consecutive groups of ``group_size`` rows (the last may be short)."""
    rows = per_row.shape[0]
    groups = -(-rows // group_size)
    padded = torch.nn.functional.pad(per_row, (*([0, 0] * (per_row.dim() - 1)), 0, groups * group_size - rows))
    return padded.view(groups, group_size, *per_row.shape[1:]).sum(1)


@torch.no_grad()
def group_residuals(z: Tensor, bits: tuple[int, ...], group_size: int) -> Tensor:
    """Mean ``|z - D(z, s_b)|`` per output-channel group at every width but the widest: (groups, K-1)."""
    rows = z.shape[0]
    flat = z.detach().reshape(rows, -1)
    counts = _group_sum(torch.full((rows,), float(flat.shape[1]), dtype=flat.dtype, device=flat.device), group_size)
    per_width = [_group_sum((_grid(flat, b) - flat).abs().sum(1), group_size) / counts for b in bits[:-1]]
    if not per_width:
        return flat.new_zeros(counts.numel(), 0)
    return torch.stack(per_width, 1)


def _levels(gates: Tensor, bits: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """``2^b - 1`` per group of the width its nested 0/1 gates select."""
    table = torch.tensor([float(2**b - 1) for b in bits], dtype=dtype, device=gates.device)
    if gates.shape[1] == 0:
        return table[0].expand(gates.shape[0])
    return table[(gates.detach() >= 0.5).to(torch.int64).cumprod(1).sum(1)]


def batched_gate_grads(dots: Tensor, gates: Tensor) -> Tensor:
    """:func:`hwsbs.quant.fused.gate_grads` for every group at once: ``dots`` (G, K), ``gates`` (G, K-1)."""
    eps = dots[:, 1:] - dots[:, :-1]
    g = gates.to(eps.dtype)
    n = gates.shape[1]
    out = torch.zeros_like(eps)
    for j in range(n):  # d z_hat / d g_j = sum_{k>=j} prod_{i<=k, i!=j} g_i eps_k
        prefix = torch.ones_like(eps[:, 0])
        total = torch.zeros_like(eps[:, 0])
        for k in range(n):
            if k != j:
                prefix = prefix * g[:, k]
            if k >= j:
                total = total + prefix * eps[:, k]
        out[:, j] = total
    return out.to(gates.dtype)


class _GroupGatedQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, gates: Tensor, bits: tuple[int, ...], group_size: int) -> Tensor:
        levels = _row_view(_levels(gates, bits, z.dtype).repeat_interleave(group_size)[: z.shape[0]], z)
        ctx.bits, ctx.group_size = bits, group_size
        ctx.save_for_backward(z, gates)
        with torch.no_grad():
            return (z * levels).round_().div_(levels)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None, None, None]:
        z, gates = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return grad, None, None, None
        rows = z.shape[0]
        with torch.no_grad():  # <grad, q_k> per group and width, from integer levels (as fused.py)
            g, zz = grad.reshape(rows, -1), z.reshape(rows, -1)
            dots = torch.stack(
                [
                    _group_sum((g * (zz * float(2**b - 1)).round()).sum(1), ctx.group_size) / float(2**b - 1)
                    for b in ctx.bits
                ],
                1,
            )
        return grad, batched_gate_grads(dots, gates), None, None


def group_gated_quantize(z: Tensor, gates: Tensor, bits: tuple[int, ...], group_size: int) -> Tensor:
    """Every output-channel group of ``z`` at the width its own row of ``gates`` selects (one autograd node).

    Args:
        z: normalised weights in [0, 1], output channels first.
        gates: hard 0/1 gates, (groups, K-1), differentiable.
        bits: candidate widths (doubling).
        group_size: output channels per group (the last group may be smaller).
    """
    return _GroupGatedQuantize.apply(z, gates, tuple(bits), int(group_size))


@torch.no_grad()
def enable_channel_bits(layer: SBSLayerMixin) -> None:
    """Give a calibrated ``layer`` one weight gate vector per output-channel group (thresholds at 0:
    widest bits), its statistics standardised over the groups at calibration (:func:`relative_statistics`).

    Raises:
        ValueError: the layer is not calibrated yet (conversion calibrates every layer).
    """
    if not layer._host_flag("calibrated"):
        raise ValueError("enable_channel_bits needs a calibrated layer (convert_model calibrates)")
    groups, k = layer.num_groups, len(layer.bits)
    raw = group_residuals(layer._normalise_weight(layer._search_standardised()[0]), layer.bits, layer.group_size)
    mean = raw.mean(0).clamp_min(EPS)
    spread = (raw / mean).std(0).clamp_min(1e-3) if groups > 1 else torch.ones_like(mean)
    scale = mean * spread
    # shift so the weakest group starts at 1 (the layer-wise start): every gate open, thresholds at 0
    shift = 1.0 - (raw / scale).min(0).values
    layer.channel_bits = True
    layer.w_theta = nn.Parameter(torch.zeros(groups, k - 1, device=layer.weight.device))
    layer.w_scale = scale.expand(groups, k - 1).contiguous()  # the registered buffer, with its new shape
    layer.register_buffer("w_shift", shift)


@torch.no_grad()
def disable_channel_bits(layer: SBSLayerMixin) -> None:
    """Back to one weight gate vector (fixed layers do not use it; their state_dict is the plain one)."""
    if not layer.channel_bits:
        return
    k = len(layer.bits)
    layer.channel_bits = False
    del cast(nn.Module, layer)._buffers["w_shift"]
    layer.w_theta = nn.Parameter(torch.zeros(k - 1, device=layer.weight.device))
    layer.w_scale = torch.ones(k - 1, device=layer.weight.device)


def weight_residuals(layer: SBSLayerMixin, z: Tensor) -> Tensor:
    """The weight gates' raw statistics: per layer (K-1), or per output-channel group (G, K-1)."""
    if layer.channel_bits:
        return group_residuals(z, layer.bits, layer.group_size)
    return lower_grid_residuals(z, layer.bits)[0]


def relative_statistics(layer: SBSLayerMixin, z: Tensor) -> Tensor:
    """The weight gates' statistics in threshold units.

    Per layer: the residual over its calibration value. Per group *(hwsbs)*: each group's residual
    standardised over the layer's groups at calibration (``A_g / (mean * spread) + shift``, the
    weakest group at 1), as the pruning gates are. Why: residuals of groups that share one clip sit
    within a few per cent of each other, so in ``A / A0`` units one threshold step crossed every
    group of a layer at once; standardised, groups sit about a temperature apart and cross one
    after another.
    """
    raw = weight_residuals(layer, z)
    if not layer.channel_bits:
        return raw / layer.w_scale
    return raw / layer.w_scale + cast(Tensor, cast(nn.Module, layer).get_buffer("w_shift"))


def channel_gated_weight(layer: SBSLayerMixin, z: Tensor) -> Tensor:
    """The searched weight grid of a channel-wise layer; its gates are kept for the cost term."""
    rel = relative_statistics(layer, z)
    gates = threshold_gate(rel, layer.w_theta, layer.tau)
    layer.last_w_gates = gates
    layer.last_w_probs = torch.sigmoid((rel - layer.w_theta.detach()) / layer.tau)
    return group_gated_quantize(z, gates, layer.bits, layer.group_size)


@torch.no_grad()
def current_group_bits(layer: SBSLayerMixin) -> tuple[int, ...]:
    """The weight width every output-channel group's gates select now."""
    rel = layer.weight_statistics().tolist()
    theta = layer.w_theta.tolist()
    return tuple(bits_from_gates(layer.bits, [a > t for a, t in zip(r, th)]) for r, th in zip(rel, theta))


def fixed_weight_grid(layer: SBSLayerMixin, z: Tensor, w_bits: int) -> Tensor:
    """Fixed mode: ``z`` on the ``w_bits`` grid, or each output row on its own (``fixed_row_bits``)."""
    rows = layer.fixed_row_bits
    if not rows:
        return quantize(z, step_size(w_bits))
    steps = _row_view(torch.tensor([step_size(b) for b in rows], dtype=z.dtype, device=z.device), z)
    return steps * round_ste(z / steps)
