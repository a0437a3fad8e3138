"""The uniform baseline: every searchable layer at one bit width, nothing pruned."""

from __future__ import annotations

from hwsbs.sbs.config_io import CompressionConfig

from .base import MethodContext, register_method

__all__ = ["uniform"]


@register_method("uniform", prunes=False, description="every layer at --uniform-bits (w and a), first/last pinned")
def uniform(ctx: MethodContext) -> CompressionConfig:
    """``--uniform-bits 4`` means w4a4 everywhere except the pinned first and last layers
    (weight-only layers: 4-bit weights, activations at their float width)."""
    bits = ctx.config.uniform_bits or ctx.config.bits[-1]
    return ctx.make_config(ctx.space.decisions({name: (bits, bits) for name in ctx.space.layer_names}, {}))
