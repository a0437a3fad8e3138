"""Configurations for profiling: the search space's layers, uniform and random configurations."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hwsbs.defaults import DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision
from hwsbs.sbs.convert import SearchSpace

__all__ = ["uniform_config", "random_config", "kept_channels"]


def kept_channels(channels: int, group_size: int, max_prune_fraction: float) -> tuple[int, int]:
    """(fewest, most) output channels a prunable layer can keep in the search."""
    groups = -(-channels // group_size)
    max_pruned = min(int(max_prune_fraction * groups + 1e-9), groups - 1)
    # The last group may be smaller; pruning the largest groups removes the most channels.
    sizes = sorted((min(group_size, channels - g * group_size) for g in range(groups)), reverse=True)
    return channels - sum(sizes[:max_pruned]), channels


def uniform_config(
    space: SearchSpace, bits: int, name: str = "", pinned_bits: int | None = None, batch: int = 1
) -> CompressionConfig:
    """Every layer at ``bits`` (pinned first/last layers at ``pinned_bits`` when given), unpruned."""
    decisions = []
    for n, layer in space.layers():
        b = pinned_bits if (pinned_bits is not None and layer.pinned) else bits
        decisions.append(LayerDecision(space.shapes[n], b, b))
    first = space.layer(space.layer_names[0])
    return CompressionConfig(decisions, name, bits=list(first.bits), group_size=first.group_size, batch=batch)


def random_config(
    space: SearchSpace,
    rng: random.Random,
    bits: Sequence[int],
    *,
    name: str = "",
    pinned_bits: int | None = 8,
    group_size: int = DEFAULT_GROUP_SIZE,
    max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION,
    batch: int = 1,
) -> CompressionConfig:
    """A random configuration like the ones a search produces.

    Each draw first picks how much to compress (a bit-width mix and a pruning intensity), then
    every layer's bits and every prunable layer's pruned groups, so that the drawn configurations
    spread from nearly uniform 8-bit to heavily compressed. Pinned layers keep ``pinned_bits``.
    """
    mix = [rng.random() + 0.05 for _ in bits]
    intensity = rng.random()
    pruned: dict[str, list[int]] = {}
    for g in space.groups:
        channels = space.shapes[g.producer].out_channels
        groups = -(-channels // group_size)
        max_pruned = min(int(max_prune_fraction * groups + 1e-9), groups - 1)
        count = sum(rng.random() < intensity for _ in range(max_pruned))
        chosen = sorted(rng.sample(range(groups), count))
        pruned[g.producer] = [c for k in chosen for c in range(k * group_size, min((k + 1) * group_size, channels))]
    source = space.kept_in_source()
    passthrough = {p for g in space.groups for p in g.passthrough}
    decisions = []
    for n, layer in space.layers():
        shape = space.shapes[n]
        if layer.pinned and pinned_bits is not None:
            w = a = pinned_bits
        else:
            w, a = rng.choices(list(bits), mix)[0], rng.choices(list(bits), mix)[0]
        own = pruned.get(n, [])
        if n in passthrough:
            own = pruned.get(source[n], [])
        kept_in = shape.in_channels - len(pruned.get(source[n], [])) if n in source else None
        decisions.append(LayerDecision(shape, w, a, list(own), kept_in))
    return CompressionConfig(decisions, name, bits=list(bits), group_size=group_size, batch=batch)
