"""A searched layer's standardised weight and gate statistics, built once per weight update, and
the clamps that follow each update (issue 16).

A search step needs the standardised weight, its clip and the weight gates' statistics twice on
the same weights: in the clamp after the optimiser step (the weight thresholds stay within reach
of their statistics) and in the next forward (the gates and the quantiser). Each is ~40 small
tensor operations per layer (the moments in float64, two grids and their residuals). The clamp
builds them once, with their autograd graph, and the next training forward takes them over. They
are the same operations on the same tensors, so values and gradients are bit-identical.

They are rebuilt whenever what they depend on changes: an in-place write to the weight, the clip
or the calibration scales (version counters), another kept-channel mask (its identity: the masks
keep their identity while the pruning decisions stay the same, see ``kept_channel_mask``). A
graph serves one backward pass: a training forward takes it out of the cache, the next builds anew.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from .fused import lower_grid_residuals
from .numba_stats import residual_means
from .scales import MIN_CLIP

if TYPE_CHECKING:
    from .layers import SBSLayerMixin

__all__ = ["CACHE", "THRESHOLD_MARGIN_TAU", "SearchedWeight", "searched_weight", "clamp_layer", "clamp_layers"]

# Thresholds stay within this many temperatures of their statistics: a gate far past its
# statistic has no surrogate gradient left, so its decision could never be reversed.
THRESHOLD_MARGIN_TAU = 3.0

#: The layer attribute holding the cached :class:`SearchedWeight` (graph tensors: never copied).
CACHE = "_searched_weight"


class SearchedWeight(NamedTuple):
    """What a searched layer computes from its weight before the quantiser."""

    w_std: Tensor  # the weight standardised over the kept rows and columns
    std: Tensor  # its standard deviation (+ EPS)
    v: Tensor  # the learned clip, with LSQ's gradient scale
    rel: Tensor  # the weight gates' statistics in threshold units (detached)


def _key(layer: SBSLayerMixin, mask: Tensor | None) -> tuple:
    w, clip, scale = layer.weight, layer.weight_clip, layer.w_scale
    return (
        (id(w), w._version, w.data_ptr(), w.requires_grad),
        (id(clip), clip._version, clip.requires_grad),
        (id(scale), scale._version),
        id(mask),  # the entry holds the mask: its id stays unique while cached
        layer.bits,
    )


def _build(layer: SBSLayerMixin, mask: Tensor | None) -> SearchedWeight:
    """The reference layer's operations (``_search_standardised``, ``_normalise_weight``,
    ``weight_statistics``), in the same order."""
    w_std, std = layer._standardise(layer.weight, mask)
    v = layer._weight_clip()
    with torch.no_grad():
        stats = residual_means(w_std, v, True, layer.bits)  # one numba pass on CPU, the same values
        if stats is None:
            z = (torch.clamp(w_std / v, -1.0, 1.0) + 1.0) / 2.0
            stats = lower_grid_residuals(z, layer.bits)[0]
        rel = stats / layer.w_scale
    return SearchedWeight(w_std, std, v, rel)


def searched_weight(layer: SBSLayerMixin, graph: bool = False, take: bool = False) -> SearchedWeight:
    """The layer's :class:`SearchedWeight` on its current weight, from the cache where still valid.

    For layers with one learned weight clip and one weight gate vector (not ``weight_group`` or
    ``channel_bits``; those run the reference code).

    Args:
        layer: a searched SBS layer with a weight.
        graph: build it with its autograd graph even under ``no_grad`` (the clamp, for the next
            training forward).
        take: the forward's call: while grad is enabled, the result's graph goes to this forward
            (out of the cache: one backward per graph).
    """
    mask = layer._kept_weight_mask()
    key = _key(layer, mask)
    grad = torch.is_grad_enabled()
    need_graph = graph or (take and grad)
    hit = layer.__dict__.get(CACHE)
    if hit is None or hit[0] != key or (need_graph and not hit[1]):
        with torch.set_grad_enabled(need_graph):
            hit = (key, need_graph, mask, _build(layer, mask))
    if take and grad:
        layer.__dict__[CACHE] = None
    else:
        layer.__dict__[CACHE] = hit
    return hit[3]


def _bounds_to_clamp(layers: Sequence[SBSLayerMixin]) -> tuple[list[Tensor], list[Tensor]]:
    """Thresholds (kept >= 0) and clipping values (kept >= MIN_CLIP) of ``layers``."""
    thresholds: list[Tensor] = [t for layer in layers for t in (layer.w_theta, layer.a_theta)]
    clips: list[Tensor] = [c for layer in layers for c in (layer.weight_clip, layer.act_clip)]
    return thresholds, clips


@torch.no_grad()
def clamp_layer(layer: SBSLayerMixin, bounds: bool = True) -> None:
    """``layer.clamp_parameters()``: thresholds >= 0 and within reach of their statistics, clipping
    values > 0, pruning under its cap (method 2-3). Runs on the device: no value is read back.

    Args:
        layer: an SBS layer.
        bounds: also apply the plain bounds (False where :func:`clamp_layers` applied them already).
    """
    margin = THRESHOLD_MARGIN_TAU * layer.tau
    if bounds:
        thresholds, clips = _bounds_to_clamp([layer])
        for t in thresholds:
            t.clamp_(min=0.0)
        for c in clips:
            c.clamp_(min=MIN_CLIP)
    if layer.mode == "search" and not layer.pinned:
        if _takes_fused_weight(layer):  # built with its graph here, taken over by the next forward
            searched_weight(layer, graph=True)
        torch.minimum(layer.w_theta, layer.weight_statistics() + margin, out=layer.w_theta)
        torch.minimum(layer.a_theta, layer.a_residual_ema / layer.a_scale + margin, out=layer.a_theta)
    if layer.prunable:
        stats = torch.sort(layer.pruning_statistics()).values
        max_pruned = layer.max_pruned_groups
        # Groups with stat <= theta are pruned: keep theta below the (max_pruned+1)-th smallest,
        # and no further than the margin below the weakest group.
        ceiling = stats[max_pruned] - 1e-6 * stats[max_pruned].abs().clamp_min(1.0)
        layer.p_theta.copy_(torch.maximum(torch.minimum(layer.p_theta, ceiling), stats[0] - margin))


@torch.no_grad()
def clamp_layers(layers: Sequence[SBSLayerMixin]) -> None:
    """:func:`clamp_layer` on every layer, in order; the plain bounds of all layers in two
    multi-tensor calls first (they involve no other layer, so the order does not matter to them)."""
    thresholds, clips = _bounds_to_clamp(layers)
    if thresholds:
        torch._foreach_clamp_min_(thresholds, 0.0)
        torch._foreach_clamp_min_(clips, MIN_CLIP)
    for layer in layers:
        clamp_layer(layer, bounds=False)


def _takes_fused_weight(layer: SBSLayerMixin) -> bool:
    """True where the next forward quantises the weight through the fused path (which reuses
    :func:`searched_weight`); only a Conv2d or a Linear has a weight to standardise."""
    from .fused_layers import fused_weight_applies  # fused_layers imports this module

    return isinstance(layer, nn.Conv2d | nn.Linear) and fused_weight_applies(layer)
