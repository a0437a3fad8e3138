"""The tensor work of the fused quantiser: plain functions of tensors, what ``--compile`` compiles.

Both functions run without autograd (inside :class:`hwsbs.quant.fused_layers.FusedQuantize`) and
repeat, operation for operation, what the reference layer code computes, so in eager mode the
fused path is bit-identical to it. What they save is allocations: the reference materialises
about five full-size tensors per quantiser in the forward pass and twenty in the backward; on
CPU a fresh multi-MiB tensor costs page faults worth several passes over it, so here the forward
works in place on one tensor and the backward on five reused buffers.

The quantiser, for a normalised input ``z = clip01(x / v)`` (signed: ``(clamp(x / v, -1, 1) + 1) / 2``):
``out = v_out * q'`` with ``q = round(z L) / L`` at the selected width (``L = 2^b - 1``), ``q' = q``
(unsigned) or ``2 q - 1`` (signed), then times the channel ``mask`` where given.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["quantize_forward", "quantize_backward"]


def quantize_forward(
    x: Tensor, v: Tensor, v_out: Tensor | None, level: Tensor, mask: Tensor | None, signed: bool
) -> Tensor:
    """The quantised (and masked) tensor; ``level`` is ``L`` of the selected width (a 0-dim tensor).

    ``mask`` holds 0/1 pruning gates (broadcast to ``x``).

    ``v_out`` None means ``v`` (one tensor passed twice would make a compiled kernel recompile).
    """
    v_out = v if v_out is None else v_out
    z = torch.div(x, v).clamp_(-1.0 if signed else 0.0, 1.0)
    if signed:
        z.add_(1.0).div_(2.0)
    q = z.mul_(level).round_().div_(level)
    if signed:
        q.mul_(2.0).sub_(1.0)
    # (q v) m == q (v m) bit for bit when m is 0 or 1 (a hard gate): one pass instead of two.
    return q.mul_(v_out if mask is None else v_out * mask)


def quantize_backward(
    grad: Tensor,
    x: Tensor,
    v: Tensor,
    v_out: Tensor | None,
    level: Tensor,
    mask: Tensor | None,
    signed: bool,
    bits: tuple[int, ...],
    need_gates: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Gradients of :func:`quantize_forward`, recomputed from ``x`` and the scales alone.

    Returns:
        ``(grad_x, grad_v, grad_v_out, grad_mask, dots)``: ``dots[k] = <dL/dz_hat, D(z, s_bk)>``
        for every width (what the gate gradients are made of), None unless ``need_gates``;
        ``grad_mask`` None without a mask. The straight-through round makes ``dz_hat/dz = 1``.
    """
    v_out = v if v_out is None else v_out
    lo = -1.0 if signed else 0.0
    g_out = grad if mask is None else grad * mask  # dL/d(unmasked output)
    t = torch.div(x, v)
    z = torch.clamp(t, lo, 1.0)
    if signed:
        z.add_(1.0).div_(2.0)
    g_z = g_out * v_out  # dL/dq' = dL/dz_hat (unsigned); signed: dL/dz_hat = 2 g_z, exactly
    dots = None
    # Contiguous, so its flat view is a view (an operand may be a transposed view, e.g. K^T).
    buf = torch.empty(z.shape, dtype=z.dtype, device=z.device)
    if need_gates:
        flat_g, flat_buf = g_z.reshape(-1), buf.reshape(-1)
        parts = []
        for b in bits:
            torch.mul(z, float(2**b - 1), out=buf).round_()
            d = torch.dot(flat_g, flat_buf)
            parts.append((d * 2.0 if signed else d) / float(2**b - 1))
        dots = torch.stack(parts)
    q = torch.mul(z, level, out=buf).round_().div_(level)
    if signed:
        q.mul_(2.0).sub_(1.0)
    prod = torch.mul(g_out, q, out=z)  # z is no longer needed: reuse its memory
    grad_v_out = prod.sum()
    grad_mask = None
    if mask is not None:
        grad_mask = torch.mul(grad, q.mul_(v_out), out=prod).sum_to_size(mask.shape)
    # Through the clamp: the gradient passes where lo <= t <= 1, bounds included (the reference's
    # where()). Boolean tensors are slow on CPU, so two threshold_backward passes test t - lo >= 0
    # and 1 - t >= 0 (exact: Sterbenz), i.e. > -denorm_min.
    g_c = _passes_at_or_above(g_z, t if lo == 0.0 else torch.sub(t, lo, out=buf), out=prod)
    g_c = _passes_at_or_above(g_c, torch.rsub(t, 1.0), out=g_z)
    # Through the division: d/dx = 1/v, d/dv = -(x/v)/v, as autograd computes them; the sum of
    # -g * b is exactly minus the sum of g * b (rounding is symmetric), one pass fewer.
    grad_v = -torch.mul(g_c, t.div_(v), out=prod).sum()
    return g_c.div_(v), grad_v, grad_v_out, grad_mask, dots


def _passes_at_or_above(grad: Tensor, value: Tensor, out: Tensor) -> Tensor:
    """``grad`` where ``value >= 0``, else 0 (into ``out``, which may alias ``grad`` but not ``value``)."""
    info = torch.finfo(value.dtype)
    below = -info.smallest_normal * info.eps  # minus the smallest subnormal: > below <=> >= 0
    return torch.ops.aten.threshold_backward.grad_input(grad, value, below, grad_input=out)
