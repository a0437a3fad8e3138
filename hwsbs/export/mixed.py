"""Export of a layer with channel-wise weight bits (issue 17): one sub-layer per width, concatenated.

A fixed SBS layer with ``fixed_row_bits`` quantises each output row at its own width. Its export
is one :class:`~hwsbs.export.layers.ExportedLayer` per width, each holding that width's rows
exactly as the whole layer at that width would encode them (same standardisation, clip and
scale: the rows are cut from the layer's full record at that width), run on the same input; the
outputs are concatenated along the channel dimension and put back in the layer's channel order.
Every output channel is therefore computed as a one-width export computes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import cast

import torch
from torch import Tensor, nn

from hwsbs.quant.layers import SBSLayerMixin

from .apb import exported_layer
from .layers import LayerRecord

__all__ = ["MixedExportedLayer", "mixed_record", "layer_module"]

#: ``(name, layer, clip, norm, backend) -> LayerRecord`` of a one-width layer (export.model._record).
RecordFn = Callable[..., LayerRecord]


def _rows(record: LayerRecord, idx: list[int]) -> LayerRecord:
    """``record`` restricted to output channels ``idx``."""
    at = torch.tensor(idx, dtype=torch.long)
    return replace(
        record,
        out_channels=len(idx),
        weight=record.weight.index_select(0, at).contiguous(),
        out_scale=record.out_scale.index_select(0, at).contiguous(),
        out_bias=record.out_bias.index_select(0, at).contiguous(),
    )


def mixed_record(name: str, layer: SBSLayerMixin, make: RecordFn, *args: object) -> LayerRecord:
    """The record of a channel-wise layer: the whole layer at its widest width, with one part per width.

    Args:
        name: the layer's qualified name.
        layer: a fixed SBS layer with ``fixed_row_bits`` (restored on return).
        make: builds a one-width record, called as ``make(name, layer, *args)``.
    """
    rows, widest = layer.fixed_row_bits, layer.fixed_w_bits
    parts, positions = [], []
    try:
        layer.fixed_row_bits = ()
        for bits in sorted(set(rows)):
            idx = [c for c, b in enumerate(rows) if b == bits]
            layer.fixed_w_bits = bits
            parts.append(_rows(make(name, layer, *args), idx))
            positions += idx
        layer.fixed_w_bits = max(rows)
        whole = make(name, layer, *args)
    finally:
        layer.fixed_row_bits, layer.fixed_w_bits = rows, widest
    order = [0] * len(rows)
    for pos, channel in enumerate(positions):
        order[channel] = pos
    return replace(whole, parts=parts, channel_order=order)


class MixedExportedLayer(nn.Module):
    """One exported sub-layer per weight width; outputs concatenated in the layer's channel order."""

    export_leaf = True  # traced as one module by hwsbs.export.fuse (its ReLU is not fused into it)

    def __init__(self, record: LayerRecord, build: Callable[[LayerRecord], nn.Module]) -> None:
        super().__init__()
        self.record = record
        self.parts = nn.ModuleList(build(p) for p in record.parts)
        self.dim = 1 if record.kind == "conv" else -1
        self.register_buffer("order", torch.tensor(record.channel_order, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([part(x) for part in self.parts], self.dim)
        return out.index_select(self.dim, cast(Tensor, self.order))


def layer_module(record: LayerRecord, backend: str, device: torch.device | str = "cpu") -> nn.Module:
    """The module that runs ``record``: a :class:`MixedExportedLayer` for channel-wise records."""
    if record.parts:
        return MixedExportedLayer(record, lambda part: exported_layer(part, backend, device))
    return exported_layer(record, backend, device)
