"""Channel-wise weight bits in a configuration (issue 17): one width per output-channel group.

``config.yaml`` writes such a layer's ``w_bits`` as a list, one entry per group of
``group_size`` output channels (the file's ``group_size``; the last group may be smaller); a
single number still means "the whole layer". A file with any list is ``hwsbs-config/2``, so
readers older than channel-wise bits stop with "format: expected 'hwsbs-config/1'" instead of
misreading it; every other file stays ``hwsbs-config/1``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from hwsbs.errors import ConfigError

__all__ = [
    "CHANNEL_FORMAT",
    "channel_widths",
    "bit_histogram",
    "collapse_group_bits",
    "check_group_bits",
    "show_w_bits",
]

#: The config format of files with channel-wise weight bits.
CHANNEL_FORMAT = "hwsbs-config/2"


def channel_widths(group_bits: Sequence[int], group_size: int, out_channels: int) -> list[int]:
    """The weight width of every output channel (group ``c // group_size``'s)."""
    return [int(group_bits[c // group_size]) for c in range(out_channels)]


def bit_histogram(
    group_bits: Sequence[int], group_size: int, out_channels: int, pruned: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """``LayerState.w_bits_groups``: (width, kept channels at it), ascending; () when one width."""
    if not group_bits:
        return ()
    gone = set(pruned)
    counts = Counter(w for c, w in enumerate(channel_widths(group_bits, group_size, out_channels)) if c not in gone)
    return tuple(sorted(counts.items())) if len(counts) > 1 else ()


def collapse_group_bits(
    group_bits: Sequence[int], group_size: int, out_channels: int, pruned: Sequence[int]
) -> tuple[int, tuple[int, ...]]:
    """``(w_bits, group_w_bits)`` of a decision: the widest kept group's width, and the per-group
    widths, or () when every kept channel has the same width (then it is a plain layer decision)."""
    gone = set(pruned)
    kept = [w for c, w in enumerate(channel_widths(group_bits, group_size, out_channels)) if c not in gone]
    widest = max(kept) if kept else max(group_bits)
    return int(widest), (tuple(int(b) for b in group_bits) if len(set(kept)) > 1 else ())


def check_group_bits(where: str, group_bits: Sequence[int], group_size: int, out_channels: int) -> None:
    """A ``w_bits`` list must have one entry per output-channel group.

    Raises:
        ConfigError: naming the layer, the expected and the found count.
    """
    groups = -(-out_channels // group_size)
    if len(group_bits) != groups:
        raise ConfigError(
            f"{where}.w_bits: expected one width per group of {group_size} output channels "
            f"({groups} for {out_channels} channels), got {len(group_bits)}"
        )


def show_w_bits(value: int | Sequence[int]) -> str:
    """A layer's weight bits for a table: ``8``, or a channel-wise layer's widths as ``4+8``."""
    if isinstance(value, int):
        return str(value)
    return "+".join(str(b) for b in sorted(set(value)))
