"""The uniform baseline: every searchable layer at one bit width, nothing pruned."""

from __future__ import annotations

from hwsbs.sbs.config_io import CompressionConfig, LayerDecision

from .base import MethodContext, register_method

__all__ = ["uniform"]


@register_method("uniform", prunes=False, description="every layer at --uniform-bits (w and a), first/last pinned")
def uniform(ctx: MethodContext) -> CompressionConfig:
    """``--uniform-bits 4`` means w4a4 everywhere except the pinned first and last layers."""
    bits = ctx.config.uniform_bits or ctx.config.bits[-1]
    decisions = []
    for name, layer in ctx.space.layers():
        w, a = (layer.fixed_w_bits, layer.fixed_a_bits) if layer.pinned else (bits, bits)
        decisions.append(LayerDecision(ctx.space.shapes[name], w, a))
    return ctx.make_config(decisions)
