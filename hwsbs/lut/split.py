"""Measure what splitting a channel-wise layer costs: ``lut build --channel-split`` (issue 17).

``hwsbs export`` runs a layer whose output-channel groups have different weight widths as one
exported sub-layer per width on the same input, outputs concatenated and put back in channel
order (:class:`~hwsbs.export.mixed.MixedExportedLayer`). The ``lut`` model prices such a layer,
when the profile declares ``channel_split``, as the sum of its table's predictions for the parts
plus ``per_split_overhead_s`` per part beyond the first (:mod:`cost_models.channel_split`).

This module measures that overhead: a sample of the table's layer shapes is exported split
exactly as the export runs a mixed layer (output-channel groups given the search's widths in
turn) and timed as the table was (same warm-up, repeats, rounds and medians); each split's
``(measured - sum of the table's parts) / (parts - 1)`` is one estimate, and their median,
clipped at 0, is the fitted overhead. It includes everything the split adds: the extra kernel
calls, the concatenation and reordering, and the ReLU that the export cannot fuse into a split
layer (it runs as its own pass after the concatenation).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from cost_models.base import LayerShape, LayerState
from hardware_profiles.schema import ChannelSplit, HardwareProfile
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION
from hwsbs.errors import ConfigError
from hwsbs.export import export_model
from hwsbs.quant.layers import SBSConv2d, SBSLinear

from .builder import LayerJob, MeasureSettings, _base_module, _input, layer_call, time_in_rounds
from .timing import summarise_times

__all__ = [
    "DEFAULT_SPLIT_LAYERS",
    "SplitSample",
    "SplitFit",
    "check_split_options",
    "split_jobs",
    "split_rows",
    "split_layer",
    "fit_overhead",
    "split_task_count",
    "measure_channel_split",
]

#: Layer shapes timed split by default (spread over the eligible shapes by size).
DEFAULT_SPLIT_LAYERS = 8

_FLOAT = 32
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}


@dataclass(frozen=True)
class SplitSample:
    """One layer shape timed split, and the table's prediction for its parts."""

    signature: str
    batch: int
    a_bits: int
    groups: tuple[tuple[int, int], ...]  # (w_bits, output channels at it), ascending in bits
    measured_s: float  # median latency of the split layer as the export runs it
    parts_s: float  # sum of the table's predictions for one sub-layer per width
    widest_s: float  # the table's prediction for the whole layer at its widest width

    @property
    def parts(self) -> int:
        """Sub-layers the layer runs as."""
        return len(self.groups)

    @property
    def overhead_s(self) -> float:
        """What each sub-layer beyond the first adds to the sum of the parts (may be negative: noise)."""
        return (self.measured_s - self.parts_s) / (self.parts - 1)


@dataclass(frozen=True)
class SplitFit:
    """The fitted ``per_split_overhead_s`` and the samples it comes from."""

    per_split_overhead_s: float
    samples: tuple[SplitSample, ...]
    a_bits: int
    widths: tuple[int, ...]
    group_size: int

    def channel_split(self) -> ChannelSplit:
        """The profile's ``channel_split`` block (four significant digits)."""
        return ChannelSplit(supported=True, per_split_overhead_s=float(f"{self.per_split_overhead_s:.4g}"))

    def describe(self) -> str:
        """One line: the fit, and the measured / parts / widest ratios it rests on (medians)."""
        ratio = statistics.median(s.measured_s / s.parts_s for s in self.samples)
        widest = statistics.median(s.measured_s / s.widest_s for s in self.samples)
        return (
            f"per_split_overhead_s {self.per_split_overhead_s:.3g} s: median of (measured - sum of the table's "
            f"parts) / (parts - 1) over {len(self.samples)} splits, clipped at 0 (median measured / sum of parts "
            f"{ratio:.2f}, measured / widest group {widest:.2f})"
        )


def check_split_options(runtime: str, bits: Sequence[int]) -> tuple[int, ...]:
    """The widths ``--channel-split`` splits layers into (the search's, ascending).

    Raises:
        ConfigError: a runtime other than torch (ONNX export does not map channel-wise layers),
            or fewer than two widths to split into.
    """
    if runtime != "torch":
        raise ConfigError(
            f"--channel-split: ONNX export does not map channel-wise layers; measure split layers with "
            f"--runtime torch, not --runtime {runtime}"
        )
    widths = tuple(sorted(set(int(b) for b in bits if 1 <= int(b) <= _FLOAT)))
    if len(widths) < 2:
        raise ConfigError(f"--channel-split: needs two or more --bits widths to split a layer, got {list(bits)}")
    return widths


def _full(job: LayerJob) -> tuple[int, int]:
    return max(job.kin or {job.in_channels}), max(job.kout or {job.out_channels})


def _shape(job: LayerJob) -> LayerShape:
    """The LayerShape a job was planned from (its name the job's first layer)."""

    def side(axis: int) -> int:  # Conv2d's output size along one axis
        extent = job.dilation[axis] * (job.kernel_size[axis] - 1) + 1
        return (job.in_size[axis] + 2 * job.padding[axis] - extent) // job.stride[axis] + 1

    out_size = job.in_size if job.kind == "linear" else (side(0), side(1))
    return LayerShape(
        job.layers[0] if job.layers else job.signature,
        job.kind,  # type: ignore[arg-type]  # a conv or linear job (split_jobs)
        job.in_channels,
        job.out_channels,
        job.kernel_size,
        job.stride,
        job.groups,
        job.in_size,
        out_size,
    )


def split_jobs(jobs: Sequence[LayerJob], group_size: int, limit: int = DEFAULT_SPLIT_LAYERS) -> list[LayerJob]:
    """Up to ``limit`` jobs a search can make channel-wise, spread by size (MACs).

    Eligible: ungrouped convolutions and linear layers with two or more groups of ``group_size``
    output channels (what ``--granularity channel`` gives per-group widths), the models' own
    layers before extra shapes (the conformance zoo).
    """
    eligible = [j for j in jobs if j.kind in ("conv", "linear") and j.groups == 1 and j.out_channels > group_size]
    eligible = [j for j in eligible if _shape(j).signature == j.signature]  # geometry read back exactly
    own = [j for j in eligible if any(not name.startswith("shape:") for name in j.layers)]
    pool = sorted(own or eligible, key=lambda j: _shape(j).macs())
    if len(pool) <= limit:
        return pool
    picks = sorted({round(i * (len(pool) - 1) / max(limit - 1, 1)) for i in range(limit)})
    return [pool[i] for i in picks]


def split_rows(out_channels: int, widths: Sequence[int], group_size: int) -> tuple[int, ...]:
    """One weight width per output channel: groups of ``group_size`` channels take ``widths`` in turn."""
    return tuple(widths[(c // group_size) % len(widths)] for c in range(out_channels))


def _groups(rows: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((b, rows.count(b)) for b in sorted(set(rows)))


def split_layer(
    job: LayerJob, rows: Sequence[int], a_bits: int, example: torch.Tensor, settings: MeasureSettings, seed: int = 0
) -> nn.Module:
    """The job's layer (full channels) with weight widths ``rows`` exported by ``hwsbs export``.

    The module is what an exported model runs for it: a :class:`~hwsbs.export.mixed.MixedExportedLayer`
    (one sub-layer per width, concatenated, reordered), then the job's ReLU/ReLU6 if it has one,
    which the export leaves unfused after a split layer.
    """
    torch.manual_seed(seed)
    kin, kout = _full(job)
    base = _base_module(job, kin, kout)
    cls = SBSConv2d if job.kind == "conv" else SBSLinear
    layer = cls.from_module(base, DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION, 1.0)  # type: ignore[arg-type]  # a Conv2d for a conv job, else a Linear
    layer._maybe_calibrate(example)
    layer.act_signed.fill_(job.act_signed)
    layer.set_fixed(max(rows), a_bits)
    layer.fixed_row_bits = tuple(rows)  # as apply_config sets a channel-wise layer
    net = nn.Sequential(layer) if job.activation is None else nn.Sequential(layer, _ACTIVATIONS[job.activation]())
    exported = export_model(net, example[:2], backend=settings.backend, device=settings.device, fold_norms=False)
    return exported.net.eval()


def fit_overhead(samples: Sequence[SplitSample]) -> float:
    """The median of the samples' per-split overheads, clipped at 0 (0 without samples)."""
    if not samples:
        return 0.0
    return max(0.0, float(statistics.median(s.overhead_s for s in samples)))


def split_task_count(
    jobs: Sequence[LayerJob], widths: Sequence[int], group_size: int, settings: MeasureSettings
) -> int:
    """Progress steps :func:`measure_channel_split` reports for ``jobs`` (already :func:`split_jobs`)."""
    splits = sum(len(_splits(j, widths, group_size)) for j in jobs)
    return splits * len(settings.batches) * max(1, settings.rounds)


def _splits(job: LayerJob, widths: Sequence[int], group_size: int) -> list[tuple[int, ...]]:
    """The width sets a job is split into: the narrowest and widest; all widths if it has the groups."""
    groups = -(-_full(job)[1] // group_size)
    sets: list[tuple[int, ...]] = [(widths[0], widths[-1])]
    if len(widths) > 2 and groups >= len(widths):
        sets.append(tuple(widths))
    return [s for s in sets if groups >= len(s)]


def measure_channel_split(
    jobs: Sequence[LayerJob],
    profile: HardwareProfile,
    settings: MeasureSettings,
    *,
    bits: Sequence[int] = DEFAULT_BITS,
    group_size: int = DEFAULT_GROUP_SIZE,
    on_step: Callable[[str], None] | None = None,
) -> SplitFit:
    """Time ``jobs`` split into the search's widths and fit ``per_split_overhead_s`` against ``profile``.

    Each job (see :func:`split_jobs`) is split into its narrowest and widest width, and into all
    of them when it has the groups (activations at the widest width up to 8 bits), at every batch,
    timed as :func:`~hwsbs.lut.builder.measure_jobs` times the table (``settings.rounds`` passes,
    warm-up, medians over all samples).

    Args:
        jobs: the layer shapes to split (full channels).
        profile: the measured profile whose ``lut`` model predicts the parts (without ``channel_split``).
        settings: how to time (``settings.backend`` resolved, ``settings.runtime`` torch).
        bits: the search's candidate widths.
        group_size: output channels per width group.
        on_step: called with a label after each timed split.

    Raises:
        ConfigError: see :func:`check_split_options`; no job to split.
    """
    from cost_models import cost_model_for

    widths = check_split_options(settings.runtime, bits)
    if not jobs:
        raise ConfigError(
            "--channel-split: no layer to split (an ungrouped conv or linear layer with more than "
            "--group-size output channels)"
        )
    model = cost_model_for(profile.model_copy(update={"channel_split": None}))  # the parts alone
    a_bits = max((w for w in widths if w <= 8), default=8)
    dev = torch.device(settings.device)
    gen = torch.Generator().manual_seed(0)
    tasks: list[tuple[LayerJob, tuple[int, ...], int, nn.Module]] = []
    for j, job in enumerate(jobs):
        kin, _ = _full(job)
        example = _input(job, kin, 2, gen)
        for width_set in _splits(job, widths, group_size):
            rows = split_rows(_full(job)[1], width_set, group_size)
            layer = split_layer(job, rows, a_bits, example, settings, seed=j)
            with torch.no_grad():  # first calls build kernels (oneDNN primitives, numba): not in any sample
                layer_call(layer, job, kin, settings.batches[0], gen, dev)()
            tasks += [(job, rows, batch, layer) for batch in settings.batches]
    samples = time_in_rounds(
        [partial(layer_call, layer, job, _full(job)[0], batch, gen, dev) for job, _, batch, layer in tasks],
        [f"{job.signature} split {'+'.join(map(str, sorted(set(rows))))} b{batch}" for job, rows, batch, _ in tasks],
        settings,
        on_step,
    )
    out = []
    for (job, rows, batch, _), times in zip(tasks, samples):
        shape, kin, kout = _shape(job), *_full(job)
        groups = _groups(rows)
        state = LayerState(max(rows), a_bits, kin, kout, w_bits_groups=groups)
        parts = sum(model.layer_cost(shape, part, batch) for part in state.bit_splits(shape))
        measured = summarise_times(times).median_s
        out.append(
            SplitSample(
                job.signature, batch, a_bits, groups, measured, parts, model.layer_cost(shape, state.widest, batch)
            )
        )
    return SplitFit(fit_overhead(out), tuple(out), a_bits, widths, group_size)
