"""Quantisation: the uniform quantiser, bit-sharing decomposition, threshold gates, SBS layers."""

from __future__ import annotations

from .gates import surrogate_grad, threshold_gate
from .layers import SBSConv2d, SBSLayerMixin, SBSLinear, sbs_layers
from .quantizer import bit_sharing_terms, compose, quantize, step_size, validate_bit_candidates

__all__ = [
    "SBSConv2d",
    "SBSLayerMixin",
    "SBSLinear",
    "bit_sharing_terms",
    "compose",
    "quantize",
    "sbs_layers",
    "step_size",
    "surrogate_grad",
    "threshold_gate",
    "validate_bit_candidates",
]
