"""Scales of SBS quantisers: standardisation, clipping ranges and LSQ's gradient scale."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "EPS",
    "MIN_CLIP",
    "LAYER_SETTINGS",
    "ActivationPath",
    "INPUT_PATH",
    "grad_scale",
    "group_absmax",
    "standardise",
]

MIN_CLIP = 1e-3  # clipping values stay positive so the normalisation never divides by ~0
EPS = 1e-8

#: The plain (non-tensor) settings of an SBS layer: what a copy of the layer must carry over.
LAYER_SETTINGS = (
    "mode",
    "fixed_w_bits",
    "fixed_a_bits",
    "pinned",
    "prunable",
    "search_weight_bits",
    "act_float",
    "weight_group",
)


class ActivationPath(NamedTuple):
    """Which gates and state quantise one activation operand (the input; a matmul's second operand)."""

    family: str  # gate family: "a" (a_theta, a_bits) or "w" (w_theta, w_bits)
    clip: str  # the clipping-value parameter
    signed: str  # the boolean buffer saying the operand can be negative
    scale: str  # the buffer of residual norms at calibration
    ema: str  # the buffer of running residual means


#: The path of a layer's input (and of a product's first operand): the a-gates and the input clip.
INPUT_PATH = ActivationPath("a", "act_clip", "act_signed", "a_scale", "a_residual_ema")


def standardise(w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(w - mean) / std``; with a 0/1 ``mask`` the moments are those of the kept entries.

    The moments are reduced in float64 and rounded once, so a masked tensor and the same
    entries sliced out of it (the physically pruned layer) get bit-identical moments.
    """
    w64 = w.double()
    if mask is None:
        mean = w64.mean()
        std = w64.std() if w.numel() > 1 else w64.abs().mean()
    else:
        m64 = mask.double()
        n = m64.sum().clamp_min(2.0)
        mean = (w64 * m64).sum() / n
        std = (((w64 - mean) * m64).pow(2).sum() / (n - 1)).sqrt()
    std = std.to(w.dtype) + EPS
    return (w - mean.to(w.dtype)) / std, std


def group_absmax(w_std: Tensor, k: int) -> Tensor:
    """Each weight's group scale: the largest |w| of its output row's group of ``k`` inputs.

    Weight-only LLM quantisation stores one FP16 scale per ``k`` inputs of a row (``--weight-group``);
    the scale is a statistic of the weights, not learned, so it is taken without a gradient.
    """
    rows = w_std.detach().reshape(w_std.shape[0], -1).abs()
    groups = F.pad(rows, (0, (-rows.shape[1]) % k)).view(rows.shape[0], -1, k).amax(-1).clamp_min(MIN_CLIP)
    return groups.repeat_interleave(k, dim=1)[:, : rows.shape[1]].reshape(w_std.shape)


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass, ``scale * grad`` in the backward (LSQ's step-size gradient scale).

    A clipping value collects one gradient term per element it clips; without this scale its
    gradient grows with the tensor size and deep models diverge.
    """
    scaled = x * scale
    return (x - scaled).detach() + scaled
