"""Pruning as the 0-bit option: the channel-group gates of an SBS layer (method section 3).

A producer's output channels are split into groups; each group has a gate on the group's
standardised mean |w| (one threshold per layer). The consumer that reads the channels applies
the gates to its input (after the producer's batch-norm and activation), so a pruned channel is
exactly zero where it is read. Both sides standardise their weights over the channels they will
keep, so the search layer quantises exactly as the physically pruned layer will.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gates import threshold_gate

if TYPE_CHECKING:
    from .layers import SBSLayerMixin

__all__ = ["ChannelGateMixin"]


class ChannelGateMixin:
    """Channel groups, their pruning gates, and the masks they imply (mixed into SBS layers)."""

    weight: Tensor
    group_size: int
    max_prune_fraction: float
    prunable: bool
    pinned: bool
    mode: str
    tau: float
    p_theta: nn.Parameter
    p_scale: Tensor
    p_spread: Tensor
    last_p_gates: Tensor | None
    _standardise: Callable[..., tuple[Tensor, Tensor]]  # SBSLayerMixin's weight standardisation

    @property
    def num_groups(self) -> int:
        return math.ceil(self.weight.shape[0] / self.group_size)

    def group_sizes(self) -> list[int]:
        """Channels per pruning group (the last group may be smaller)."""
        n = self.weight.shape[0]
        return [min(self.group_size, n - g * self.group_size) for g in range(self.num_groups)]

    def _group_norms(self, w_std: Tensor) -> Tensor:
        """Mean |standardised w| per group of output channels."""
        per_channel = w_std.detach().abs().flatten(1).mean(1)
        pad = self.num_groups * self.group_size - per_channel.numel()
        padded = F.pad(per_channel, (0, pad))
        counts = torch.tensor(self.group_sizes(), dtype=per_channel.dtype, device=per_channel.device)
        return padded.view(self.num_groups, self.group_size).sum(1) / counts

    def _kept_weight_mask(self) -> Tensor | None:
        """0/1 over the weight: the rows and input columns the physically pruned layer keeps.

        Standardising over these alone makes the search layer quantise exactly as the pruned
        layer will (same mean and std), so the search model is the pruned model. The same row and
        column masks give the same mask object (what was computed with it stays valid: weight_stats).
        """
        row_source: SBSLayerMixin | None = (
            cast("SBSLayerMixin", self) if self.searches_pruning else self.__dict__.get("row_source")
        )
        rows = row_source.kept_channel_mask() if row_source is not None else None
        col_source: SBSLayerMixin | None = self.__dict__.get("mask_source")
        cols = col_source.kept_channel_mask() if col_source is not None else None
        hit = self.__dict__.get("_weight_mask")
        if hit is not None and hit[0] is rows and hit[1] is cols and hit[2] == self.weight.shape:
            return hit[3]
        mask = self._combine_masks(rows, cols)
        self.__dict__["_weight_mask"] = (rows, cols, self.weight.shape, mask)  # holds rows, cols: ids stay unique
        return mask

    def _combine_masks(self, rows: Tensor | None, cols: Tensor | None) -> Tensor | None:
        mask = None
        if rows is not None:
            mask = rows.view(-1, *([1] * (self.weight.dim() - 1))).expand_as(self.weight)
        if cols is not None and self.weight.shape[1] == cols.numel():
            col_mask = cols.view(1, -1, *([1] * (self.weight.dim() - 2))).expand_as(self.weight)
            mask = col_mask if mask is None else mask * col_mask
        return mask

    def _expand_groups(self, g: Tensor) -> Tensor:
        return g.repeat_interleave(self.group_size)[: self.weight.shape[0]]

    @property
    def searches_pruning(self) -> bool:
        """True while this layer's output channel groups carry live pruning gates."""
        return self.prunable and self.mode == "search" and not self.pinned

    @property
    def max_pruned_groups(self) -> int:
        """Groups this layer may lose: the ``max_prune_fraction`` cap, and never all of them."""
        return min(int(math.floor(self.max_prune_fraction * self.num_groups + 1e-9)), self.num_groups - 1)

    def pruning_statistics(self) -> Tensor:
        """Each group's mean |standardised w|, standardised over the groups at calibration (detached).

        A search step reads it several times per producer (its gates, its consumers' kept masks,
        the clamp) between weight updates, so it is cached on the tensors' versions: any in-place
        write (the optimiser, ``load_state_dict``, ``fill_``) or a new tensor recomputes it.
        """
        key = tuple((id(t), t._version, t.data_ptr()) for t in (self.weight, self.p_scale, self.p_spread))
        hit = self.__dict__.get("_pruning_stats")
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            norms = self._group_norms(self._standardise(self.weight)[0])
            stats = (norms / self.p_scale - 1.0) / self.p_spread
        self.__dict__["_pruning_stats"] = (key, stats)
        return stats

    @torch.no_grad()
    def kept_channel_mask(self) -> Tensor | None:
        """1.0 for every output channel the pruning gates keep now, 0.0 for pruned ones.

        On CPU the same decisions give the same mask object even after the statistics or the
        threshold moved (one comparison of a few booleans), so what was computed with the mask
        (the standardised weight of the clamp, weight_stats) stays valid for the next forward.
        """
        if not self.searches_pruning:
            return None
        stats = self.pruning_statistics()
        key = (id(self.p_theta), self.p_theta._version, self.group_size)
        layout = (self.group_size, self.weight.shape[0], self.weight.dtype, self.weight.device)
        hit = self.__dict__.get("_kept_mask")
        if hit is not None and hit[0] is stats and hit[1] == key:  # same statistics and threshold
            return hit[4]
        kept = stats > self.p_theta
        if hit is not None and hit[3] == layout and kept.is_cpu and torch.equal(hit[2], kept):
            keep = hit[4]  # the same decisions: the same mask (a read of the device would wait on it)
        else:
            keep = self._expand_groups(kept.to(self.weight.dtype))
        self.__dict__["_kept_mask"] = (stats, key, kept, layout, keep)  # holding stats keeps its id unique
        return keep

    def channel_gates(self) -> Tensor | None:
        """This producer's pruning gates, one per output channel (None when it does not prune).

        Called by the consumer that reads the channels; the group gates are kept for the cost term.
        """
        if not self.searches_pruning:
            self.last_p_gates = None
            return None
        g = threshold_gate(self.pruning_statistics(), self.p_theta, self.tau)
        self.last_p_gates = g
        return self._expand_groups(g)

    def _mask_input(self, x: Tensor) -> Tensor:
        """Zero the input channels whose producer group is pruned (channels: dim 1, or last for Linear)."""
        source: SBSLayerMixin | None = self.__dict__.get("mask_source")
        if source is None:
            return x
        mask = source.channel_gates()
        if mask is None:
            return x
        if isinstance(self, nn.Linear):
            return x * mask.to(x.dtype)
        return x * mask.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def pruned_groups(self) -> list[int]:
        """Indices of the channel groups whose pruning gate is closed."""
        if not self.searches_pruning:
            return []
        stats = self.pruning_statistics()
        return [i for i, s in enumerate(stats.tolist()) if not s > float(self.p_theta)]

    def pruned_channels(self) -> list[int]:
        return [
            c
            for g in self.pruned_groups()
            for c in range(g * self.group_size, min((g + 1) * self.group_size, self.weight.shape[0]))
        ]
