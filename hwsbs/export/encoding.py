"""The exact integer form of an SBS layer's fake-quantised weights and inputs.

Weights (``w_bits = k <= 8``). ``SBSLayerMixin.quantized_weight`` computes, on standardised
weights, ``w_q = std * v_w * (2 * D(z) - 1)`` with ``D(z) = i / (2^k - 1)``, ``i`` in
``0 .. 2^k - 1``. So ``w_q = s_w * n`` with ``s_w = std * v_w / (2^k - 1)`` and the *odd*
integer ``n = 2i - (2^k - 1)`` in ``[-(2^k - 1), 2^k - 1]``. The int8 code stored is:

* ``k <= 7``: ``code = n`` (fits int8), so ``n = code`` ("plain");
* ``k == 8``: ``n`` needs 9 bits signed, so ``code = i - 128`` in ``[-128, 127]`` and
  ``n = 2 * code + 1`` ("doubled"). A dot product then needs the rank-1 term
  ``sum(u) * 1``: ``sum(u * n) = 2 * sum(u * code) + sum(u)``.

Inputs (``a_bits = k <= 8``). ``quantized_input`` computes ``j = round(z * (2^k - 1))`` with
``z = clamp(x / v, 0, 1)`` (unsigned) or ``z = (clamp(x / v, -1, 1) + 1) / 2`` (signed, when
calibration saw negative inputs). The kernels receive ``u = j`` as uint8 in both cases:

* unsigned: ``x_q = s_a * j`` with ``s_a = v / (2^k - 1)``;
* signed: ``x_q = s_a * (2j - (2^k - 1))``: odd multiples of ``s_a``, which cannot represent the
  0 that convolution padding inserts. The kernels pad ``u`` with 0, and the layer subtracts
  ``(2^k - 1) * sum(n over the non-padded window)``, a constant per output channel and
  position (:mod:`hwsbs.export.layers` precomputes it per input size).

So every layer output is ``gamma_o * S + beta_o (+ border term)`` where ``S = sum(u * n)`` is an
exact integer: the integer kernels reproduce the fake-quantised evaluation up to float32
rounding of the scales (and of the folded batch-norm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hwsbs.quant.layers import SBSLayerMixin
from hwsbs.quant.quantizer import step_size

__all__ = [
    "MAX_INT_BITS",
    "WeightCodes",
    "weight_codes",
    "odd_weights",
    "input_codes",
    "fake_quant_input",
    "int16_pair_safe",
]

#: Widest bit width the integer (int8) kernels take; wider layers run in float.
MAX_INT_BITS = 8

_INT16_MAX = 32767


@dataclass
class WeightCodes:
    """A layer's weights as int8 codes and one float scale (``w_q = scale * n``)."""

    codes: Tensor  # int8, the layer's weight shape
    scale: Tensor  # 0-d float32: std * v_w / (2^k - 1)
    bits: int  # weight bits k
    doubled: bool  # True (k == 8): n = 2 * code + 1; False: n = code


@torch.no_grad()
def weight_codes(layer: SBSLayerMixin, bits: int) -> WeightCodes:
    """The int8 codes of ``layer``'s fixed ``bits``-bit weight, computed as the layer quantises.

    The same tensor operations as ``quantized_weight`` (standardise, normalise with the
    gradient-scaled clip, ``round(z / step)``) give bit-identical levels ``i``.
    """
    if not 1 <= bits <= MAX_INT_BITS:
        raise ValueError(f"integer weight codes need 1..{MAX_INT_BITS} bits, got {bits}")
    w_std, std = layer._standardise(layer.weight.detach())
    clip = layer._weight_clip().detach()
    z = layer._normalise_weight(w_std)
    levels = 2**bits - 1
    i = torch.round(z / step_size(bits))
    doubled = bits == MAX_INT_BITS
    codes = (i - 2 ** (bits - 1)) if doubled else (2 * i - levels)
    scale = (std * clip / levels).to(torch.float32)
    return WeightCodes(codes.to(torch.int8), scale.reshape(()), bits, doubled)


def odd_weights(codes: Tensor, doubled: bool) -> Tensor:
    """The odd integers ``n`` the codes stand for (int32)."""
    c = codes.to(torch.int32)
    return 2 * c + 1 if doubled else c


def input_codes(x: Tensor, clip: Tensor, bits: int, signed: bool) -> Tensor:
    """Integer levels ``j`` (a float tensor of whole numbers in ``0 .. 2^bits - 1``).

    The operations are those of ``SBSLayerMixin.quantized_input`` in fixed mode (in place on
    one temporary, which does not change a single rounding), so ``j`` is bit-identical to the
    fake quantiser's levels for the same ``x``.
    """
    z = x / clip
    if signed:
        z.clamp_(-1.0, 1.0).add_(1.0).div_(2.0)
    else:
        z.clamp_(0.0, 1.0)
    return z.div_(step_size(bits)).round_()


def fake_quant_input(x: Tensor, clip: Tensor, bits: int, signed: bool) -> Tensor:
    """The fake-quantised input (for float-path layers), as ``quantized_input`` computes it."""
    step = step_size(bits)
    z_hat = step * input_codes(x, clip, bits, signed)
    return clip * (2.0 * z_hat - 1.0) if signed else clip * z_hat


def int16_pair_safe(w_bits: int, a_bits: int) -> bool:
    """True when a u8 x s8 kernel that sums *pairs* of products in int16 cannot saturate.

    x86 CPUs without VNNI multiply u8 x s8 with VPMADDUBSW, which adds two adjacent products
    into a saturating int16: exact only while ``2 * max|u| * max|code| <= 32767``. That holds for
    7-bit inputs with any weight codes and for 8-bit inputs with weights of 6 bits or fewer.
    """
    max_u = 2**a_bits - 1
    max_code = 2 ** (MAX_INT_BITS - 1) if w_bits == MAX_INT_BITS else 2**w_bits - 1
    return 2 * max_u * max_code <= _INT16_MAX
