"""The fused quantiser path of SBS layers in search mode (issue 16), and the switch that selects it.

Per quantiser (a layer's weight, its input, a product's operands) the reference layer code runs
the normalisation, the clip, the grid at the selected width, the de-normalisation and the
channel mask as separate autograd operations, each keeping its input for the backward pass.
Here one autograd function does all of it: it saves only the input, the clips and the (small)
gates and mask, and recomputes the rest in its backward (:mod:`hwsbs.quant.kernels`). The gate
statistics are taken on the input directly (a fixed sample of an activation, normalised), so
no normalised copy is kept either. The selected width is found on the device (no host read).

Values are those of the reference, operation for operation: with the torch kernels the fused
path is bit-identical in value and gradient (tests/test_fused_quantizers.py). On CPU their numba
loops run by default (:mod:`hwsbs.quant.numba_kernels`): values and input gradients are still
identical, the gradients of clips, gates and masks (sums) agree to float32 rounding.
:func:`use_fused` switches to the reference layer code (``HWSBS_QUANTIZER=reference`` too);
``--compile`` (:mod:`hwsbs.quant.compiled`) compiles the two torch kernels instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsbs.distributed import mean_over_ranks

from . import compiled, numba_kernels
from .fused import ACT_STAT_SAMPLES, _grid, gate_grads, sample_index
from .gates import threshold_gate
from .kernels import quantize_backward, quantize_forward
from .numba_stats import residual_means
from .scales import ActivationPath
from .weight_stats import searched_weight

if TYPE_CHECKING:
    from .layers import SBSLayerMixin

__all__ = [
    "FusedQuantize",
    "fused_quantize",
    "use_fused",
    "fused_enabled",
    "fused_input",
    "fused_weight",
    "fused_weight_applies",
]

_STATE = {"fused": os.environ.get("HWSBS_QUANTIZER", "fused").strip().lower() != "reference"}


def use_fused(enabled: bool) -> bool:
    """Select the fused quantisers (True, the default) or the reference layer code; returns the old value."""
    old = _STATE["fused"]
    _STATE["fused"] = bool(enabled)
    return old


def fused_enabled() -> bool:
    """True while SBS layers in search mode quantise through :class:`FusedQuantize`."""
    return _STATE["fused"]


@lru_cache(maxsize=64)
def _levels(bits: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor([float(2**b - 1) for b in bits], dtype=dtype, device=device)


@lru_cache(maxsize=256)
def _level(bits: tuple[int, ...], index: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``_levels(...)[index]`` as its own tensor, made once (the kernels only read it); a normal
    tensor even when first asked for under inference mode (the backward saves it)."""
    with torch.inference_mode(False):
        return _levels(bits, dtype, device)[index].clone()


def _selected_level(gates: Tensor, bits: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``2^b - 1`` of the width nested 0/1 gates select (consecutive open gates), on the device."""
    if gates.numel() == 0:
        return _level(bits, 0, dtype, device)
    if gates.is_cpu:  # a host read costs nothing here: one read instead of five tiny ops
        opened = 0
        for g in gates.tolist():
            if not g >= 0.5:  # as the device count below: NaN closes
                break
            opened += 1
        return _level(bits, opened, dtype, device)
    levels = _levels(bits, dtype, device)
    index = (gates.detach() >= 0.5).to(torch.int64).cumprod(0).sum()
    return levels[index]


def _kernel(name: str, eager: Callable[..., Any]) -> Callable[..., Any]:
    """Kernel ``name``: torch.compile's under ``--compile`` (until it fails), else numba's, else ``eager``."""
    if compiled.compiling():
        return compiled.kernel(name, eager)
    return numba_kernels.kernel(name, eager)


class FusedQuantize(torch.autograd.Function):
    """``mask * v_out * q'(D(normalise(x, v), s_b))`` with the width ``b`` chosen by ``gates``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        v: Tensor,
        v_out: Tensor,
        gates: Tensor,
        mask: Tensor | None,
        bits: tuple[int, ...],
        signed: bool,
    ) -> Tensor:
        level = _selected_level(gates, bits, x.dtype, x.device)
        ctx.bits, ctx.signed, ctx.has_mask = bits, signed, mask is not None
        ctx.save_for_backward(x, v, v_out, gates, level, mask)
        ctx.same_v = v_out is v
        return _kernel("forward", quantize_forward)(x, v, None if v_out is v else v_out, level, mask, signed)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        x, v, v_out, gates, level, mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        kernel = _kernel("backward", quantize_backward)
        grad_x, grad_v, grad_v_out, grad_mask, dots = kernel(
            grads[0].contiguous(), x, v, None if ctx.same_v else v_out, level, mask, ctx.signed, ctx.bits, bool(need[3])
        )
        grad_gates = gate_grads(dots, gates) if dots is not None else None
        return grad_x, grad_v, grad_v_out, grad_gates, grad_mask if ctx.has_mask else None, None, None


def fused_quantize(
    x: Tensor, v: Tensor, v_out: Tensor, gates: Tensor, bits: tuple[int, ...], signed: bool, mask: Tensor | None = None
) -> Tensor:
    """The fused quantiser (see :class:`FusedQuantize`); ``v``, ``v_out`` 0-dim, ``mask`` broadcast to ``x``."""
    return FusedQuantize.apply(x, v, v_out, gates, mask, tuple(bits), bool(signed))


@torch.no_grad()
def _sampled_stats(x: Tensor, v: Tensor, signed: bool, bits: tuple[int, ...]) -> Tensor:
    """:func:`hwsbs.quant.fused.sampled_residuals` of the normalised ``x``, normalising only the sample."""
    flat = x.detach().reshape(-1)
    index = sample_index(flat.numel(), ACT_STAT_SAMPLES, str(flat.device)) if flat.numel() > ACT_STAT_SAMPLES else None
    if len(bits) < 2:
        return flat.new_zeros(0)
    v = v.detach()
    if (fast := residual_means(flat, v, signed, bits, index)) is not None:  # one numba pass, same values
        return fast
    if index is not None:
        flat = flat.index_select(0, index)
    z = (torch.clamp(flat / v, -1.0, 1.0) + 1.0) / 2.0 if signed else torch.clamp(flat / v, 0.0, 1.0)
    return torch.stack([F.l1_loss(_grid(z, b), z) for b in bits[:-1]])


def _gates(layer: SBSLayerMixin, family: str, rel: Tensor) -> Tensor:
    """Hard gates of one family on relative statistics ``rel``; kept on the layer for the cost term."""
    theta: Tensor = getattr(layer, f"{family}_theta")
    gates = threshold_gate(rel, theta, layer.tau)
    setattr(layer, f"last_{family}_gates", gates)
    setattr(layer, f"last_{family}_probs", torch.sigmoid((rel - theta.detach()) / layer.tau))
    return gates


def fused_activation(
    layer: SBSLayerMixin, x: Tensor, path: ActivationPath, momentum: float, mask: Tensor | None = None
) -> Tensor | None:
    """The searched activation quantiser of ``layer._quantize_activation`` (times ``mask``), fused.

    Returns None where the fused path does not apply (the reference code runs then): fixed or
    pinned layers, float activations, the curvature probe (it needs the normalised input).
    """
    if not _STATE["fused"] or layer.mode != "search" or layer.pinned or layer.act_float:
        return None
    if layer.__dict__.get("curvature_probe") is not None and layer.training:
        return None
    v = layer._act_clip(x, getattr(layer, path.clip))
    signed = layer._host_flag(path.signed)
    ema: Tensor = getattr(layer, path.ema)
    if layer.training:  # the statistic on a fixed sample, as the reference computes it
        batch_stats = mean_over_ranks(_sampled_stats(x, v, signed, layer.bits))  # torchrun: identical gates
        with torch.no_grad():
            ema.lerp_(batch_stats, momentum)
    else:
        batch_stats = ema
    gates = _gates(layer, path.family, batch_stats / getattr(layer, path.scale))
    return fused_quantize(x, v, v, gates, layer.bits, signed, mask)


def fused_input(layer: SBSLayerMixin, x: Tensor, path: ActivationPath, momentum: float) -> Tensor | None:
    """``layer.quantized_input(x)`` fused: the input quantiser and the producer's channel gates."""
    if not _STATE["fused"] or layer.mode != "search" or layer.pinned or layer.act_float:
        return None
    source: SBSLayerMixin | None = layer.__dict__.get("mask_source")
    mask = source.channel_gates() if source is not None else None
    if mask is not None:
        mask = mask.to(x.dtype)
        if not isinstance(layer, nn.Linear):
            mask = mask.view(1, -1, *([1] * (x.dim() - 2)))
    out = fused_activation(layer, x, path, momentum, mask)
    if out is None:  # the curvature probe: the reference quantiser, the mask as the reference applies it
        out = layer._quantize_activation(x, path)
        return out if mask is None else out * mask
    return out


def fused_weight_applies(layer: SBSLayerMixin) -> bool:
    """True where ``layer.quantized_weight()`` runs :func:`fused_weight` (else the reference code)."""
    if not _STATE["fused"] or layer.mode != "search" or layer.pinned or not layer.search_weight_bits:
        return False
    return layer.weight_group <= 0 and not layer.channel_bits  # else a clip tensor / per-group gates


def fused_weight(layer: SBSLayerMixin) -> Tensor | None:
    """``layer.quantized_weight()`` in search mode, fused (None where the reference code runs).

    The standardised weight and the gate statistics come from :func:`searched_weight`: built by
    the clamp after the latest weight update where nothing changed since (the same values).
    """
    if not fused_weight_applies(layer):
        return None
    w_std, std, v, rel = searched_weight(layer, take=True)
    gates = _gates(layer, "w", rel)
    return fused_quantize(w_std, v, std * v, gates, layer.bits, True)
