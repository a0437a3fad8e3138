"""Measure a device's layer latencies into a ``hwsbs-lut/1`` table for the ``lut`` cost model.

Every distinct layer shape (``LayerShape.signature``) of the given models is exported exactly as
``hwsbs export`` exports it and timed in isolation: over a grid of kept channel counts where the
search can prune (producers' outputs, consumers' inputs, depthwise layers in between), at every
(w_bits, a_bits) the export's kernels execute differently. Bit pairs that run on the same kernel
are not measured twice: the table says ``fallback: next_wider`` and the ``lut`` model maps them
to the narrowest measured pair at least as wide, which is the kernel the export uses for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import torch
from torch import Tensor, nn

from cost_models.base import LayerShape
from hardware_profiles.lut_table import LookupTable, LutEntry
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION
from hwsbs.export import ModelSpec, export_model
from hwsbs.export.fuse import activations_after
from hwsbs.export.layers import ExportedLayer
from hwsbs.export.model import plan_path
from hwsbs.quant.layers import SBSConv2d, SBSLinear
from hwsbs.sbs.convert import convert_model

from .configs import kept_channels
from .timing import sample_times, summarise_times

__all__ = [
    "LayerJob",
    "MeasureSettings",
    "plan_jobs",
    "executed_pairs",
    "grid_points",
    "layer_call",
    "time_in_rounds",
    "measure_jobs",
]

_FLOAT = 32


@dataclass
class LayerJob:
    """One layer signature to measure and the kept channel counts the search can give it."""

    signature: str
    kind: str  # "conv", "linear" or "matmul"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool
    in_size: tuple[int, int]  # input H x W (linear: positions x 1)
    act_signed: bool  # the model feeds it signed inputs (decides the input quantiser)
    activations: list[str | None] = field(default_factory=list)  # fused ReLU/ReLU6 per layer (None: none)
    kin: set[int] = field(default_factory=set)
    kout: set[int] = field(default_factory=set)
    layers: list[str] = field(default_factory=list)  # "model:layer" names with this signature

    @property
    def activation(self) -> str | None:
        """The activation most of its layers get fused (ties: fused), measured with the layer."""
        fused = [a for a in self.activations if a is not None]
        if not fused or 2 * len(fused) < len(self.activations):
            return None
        return max(set(fused), key=fused.count)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def points(self) -> list[tuple[int, int]]:
        """(kept_in, kept_out) to measure: a full grid, a line for depthwise layers."""
        if self.depthwise:
            return [(k, k) for k in sorted(self.kout)]
        return [(i, o) for i in sorted(self.kin) for o in sorted(self.kout)]


@dataclass(frozen=True)
class MeasureSettings:
    """How each layer is timed."""

    batches: tuple[int, ...] = (1,)
    warmup: int = 10
    repeats: int = 30
    min_time_s: float = 0.05  # keep repeating fast layers until this much time is spent
    rounds: int = 3  # passes over the whole table, each with its share of the repeats
    backend: str = "auto"
    device: str = "cpu"
    runtime: str = "torch"  # "torch" (the torch export) or "onnxruntime" (single-layer QDQ graphs)
    round_8bit_weights: bool = False  # ORT: 8-bit weights as export --round-8bit-weights runs them (fused)


def grid_points(channels: int, fewest: int, count: int, group_size: int) -> list[int]:
    """``count`` kept channel counts from ``fewest`` to ``channels``, on whole pruning groups."""
    if count <= 1 or fewest >= channels:
        return [channels]
    points = {channels, fewest}
    for k in range(1, count - 1):
        raw = fewest + (channels - fewest) * k / (count - 1)
        snapped = channels - group_size * round((channels - raw) / group_size)
        points.add(min(max(snapped, fewest), channels))
    return sorted(points)


#: The LayerShape fields a LayerJob holds as they are.
_SHAPE_FIELDS = ("kind", "in_channels", "out_channels", "kernel_size", "stride", "groups", "in_size")


def _new_job(
    shape: LayerShape, *, padding: tuple[int, int], dilation: tuple[int, int], bias: bool, act_signed: bool
) -> LayerJob:
    """A job for ``shape``'s signature, with the geometry a LayerShape does not hold, and no layers yet."""
    copied = {name: getattr(shape, name) for name in _SHAPE_FIELDS}
    return LayerJob(
        signature=shape.signature, padding=padding, dilation=dilation, bias=bias, act_signed=act_signed, **copied
    )


def _shape_job(shape: LayerShape) -> LayerJob:
    """A job for a bare LayerShape (no model): full channels, padding from its sizes."""
    pads = tuple(
        max(0, -(-((o - 1) * s + k - i) // 2))
        for i, o, s, k in zip(shape.in_size, shape.out_size, shape.stride, shape.kernel_size)
    )
    padding = cast("tuple[int, int]", pads) if shape.kind == "conv" else (0, 0)  # one per side
    job = _new_job(shape, padding=padding, dilation=(1, 1), bias=False, act_signed=False)
    job.kin.add(shape.in_channels)
    job.kout.add(shape.out_channels)
    job.layers.append(f"shape:{shape.name}")
    job.activations.append(None)
    return job


def plan_jobs(
    specs: Sequence[ModelSpec],
    bits: Sequence[int] = DEFAULT_BITS,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    max_prune_fraction: float = 0.5,
    grid: int = 3,
    extra_shapes: Sequence[LayerShape] = (),
) -> list[LayerJob]:
    """The signatures of ``specs``' layers with their kept-channel grids (union over layers),
    plus ``extra_shapes`` at full channels (e.g. ``hwsbs.testing``'s conformance zoo)."""
    jobs: dict[str, LayerJob] = {}
    for spec in specs:
        fp = spec.build()
        fused = activations_after(fp)
        space = convert_model(
            fp, spec.example(), bits, group_size=group_size, max_prune_fraction=max_prune_fraction, prune=True
        )
        producers = {g.producer for g in space.groups}
        source = space.kept_in_source()

        def options(channels: int) -> list[int]:
            fewest, _ = kept_channels(channels, group_size, max_prune_fraction)
            return grid_points(channels, fewest, grid, group_size)

        for name in space.layer_names:
            shape = space.shapes[name]
            mod = space.layer(name)
            sig = shape.signature
            job = jobs.get(sig)
            if job is None:
                conv = shape.kind == "conv"
                geometry = cast(nn.Conv2d, mod)  # read only for a conv, an SBSConv2d
                job = jobs[sig] = _new_job(
                    shape,
                    padding=cast("tuple[int, int]", tuple(geometry.padding)) if conv else (0, 0),
                    dilation=cast("tuple[int, int]", tuple(geometry.dilation)) if conv else (1, 1),
                    bias=getattr(mod, "bias", None) is not None,  # an attention product has none
                    act_signed=bool(mod.act_signed),
                )
            job.layers.append(f"{spec.name}:{name}")
            job.activations.append(fused.get(name))
            if shape.is_depthwise:
                job.kout.update(options(shape.out_channels) if name in source else [shape.out_channels])
                continue
            job.kout.update(options(shape.out_channels) if name in producers else [shape.out_channels])
            job.kin.update(options(shape.in_channels) if name in source else [shape.in_channels])
    for shape in extra_shapes:
        if shape.signature not in jobs:
            jobs[shape.signature] = _shape_job(shape)
    return list(jobs.values())


def executed_pairs(backend: str, runtime: str = "torch", rounded: bool = False) -> list[tuple[int, int, str]]:
    """The (w_bits, a_bits) pairs to measure with ``backend`` (or ``runtime``) and what runs them.

    ONNX Runtime: :data:`~hwsbs.lut.ort_runtime.ORT_PAIRS` (8-bit weights ``rounded`` onto int8:
    :data:`~hwsbs.lut.ort_runtime.ORT_ROUNDED_PAIRS`). Torch: the widest pairs of the integer region (every narrower pair runs the same kernel), 8/8 when it
    is not in that region (it then runs in float32 on fake-quantised values), and 32/32.
    """
    if runtime == "onnxruntime":
        from .ort_runtime import ORT_PAIRS, ORT_ROUNDED_PAIRS

        return list(ORT_ROUNDED_PAIRS if rounded else ORT_PAIRS)
    inside = [
        (w, a) for w in range(1, 9) for a in range(1, 9) if plan_path(w, a, 1, (0, 0), "zeros", backend)[0] == "int8"
    ]
    widest = [p for p in inside if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in inside)]
    pairs = [(w, a, f"int8 {backend}") for w, a in sorted(widest, reverse=True)]
    if (8, 8) not in inside:
        pairs.append((8, 8, f"float32 ({plan_path(8, 8, 1, (0, 0), 'zeros', backend)[1]})"))
    pairs.append((_FLOAT, _FLOAT, "float32"))
    return pairs


class _FloatProduct(nn.Module):
    """An attention product as hwsbs's deploy path runs it: a float32 batched matmul.

    The export has no integer attention kernel yet, so this is what every width costs there; the
    second operand (keys or values) is per sample, made once per batch size.
    """

    def __init__(self, heads: int, reduction: int, cols: int) -> None:
        super().__init__()
        self.heads, self.reduction, self.cols = heads, reduction, cols
        self.operand: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.operand is None or self.operand.shape[0] != x.shape[0]:
            gen = torch.Generator().manual_seed(0)
            shape = (x.shape[0], self.heads, self.reduction, self.cols)
            self.operand = torch.randn(shape, generator=gen).to(x.device)
        return torch.matmul(x, self.operand)


def _base_module(job: LayerJob, kin: int, kout: int) -> nn.Module:
    if job.kind == "matmul":
        return _FloatProduct(job.in_size[1], kin, kout)
    if job.kind == "linear":
        return nn.Linear(kin, kout, bias=job.bias)
    groups = kout if job.depthwise else job.groups
    return nn.Conv2d(
        kin,
        kout,
        job.kernel_size,
        stride=job.stride,
        padding=job.padding,
        dilation=job.dilation,
        groups=groups,
        bias=job.bias,
    )


def _input(job: LayerJob, kin: int, batch: int, gen: torch.Generator) -> Tensor:
    if job.kind == "matmul":  # (batch, heads, rows, reduction)
        return torch.randn((batch, job.in_size[1], job.in_size[0], kin), generator=gen)
    if job.kind == "linear":
        positions = job.in_size[0]
        shape: tuple[int, ...] = (batch, positions, kin) if positions > 1 else (batch, kin)
    else:
        shape = (batch, kin, *job.in_size)
    x = torch.randn(shape, generator=gen) if job.act_signed else torch.rand(shape, generator=gen)
    return x


def _export_one(
    job: LayerJob, base: nn.Module, w: int, a: int, example: Tensor, settings: MeasureSettings
) -> nn.Module:
    """The job's layer at ``w``/``a`` bits as a one-layer export (an attention product as it is)."""
    if isinstance(base, _FloatProduct):
        return base.to(settings.device)
    cls = SBSConv2d if job.kind == "conv" else SBSLinear
    layer = cls.from_module(base, DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION, 1.0)  # type: ignore[arg-type]  # base is a Conv2d for a conv job, else a Linear
    layer._maybe_calibrate(example)
    layer.act_signed.fill_(job.act_signed)
    layer.set_fixed(w, a)
    exported = export_model(
        nn.Sequential(layer), example[:2], backend=settings.backend, device=settings.device, fold_norms=False
    )
    if job.activation is not None:  # as inside the exported model
        cast(ExportedLayer, cast(nn.Sequential, exported.net)[0]).fuse_activation(job.activation)
    return exported


def _exported(job: LayerJob, base: nn.Module, w: int, a: int, example: Tensor, settings: MeasureSettings) -> nn.Module:
    exported = _export_one(job, base, w, a, example, settings)
    if isinstance(exported, _FloatProduct):
        return exported
    return cast(ExportedLayer, cast(nn.Sequential, cast(nn.Module, exported).net)[0])  # the Sequential's one layer


def _measured(
    job: LayerJob, base: nn.Module, w: int, a: int, example: Tensor, settings: MeasureSettings, shape: tuple[int, ...]
) -> nn.Module | Callable[[], object]:
    """The torch layer to call on an input, or (ONNX Runtime) a call with its input bound."""
    if settings.runtime == "torch":
        return _exported(job, base, w, a, example, settings)
    from .ort_runtime import ort_layer_call

    layer = base if job.kind == "matmul" else _export_one(job, base, w, a, example, settings)
    exact = not settings.round_8bit_weights
    return ort_layer_call(job.kind, layer, shape, torch.get_num_threads(), exact_8bit_weights=exact)


def layer_call(
    layer: nn.Module, job: LayerJob, kin: int, batch: int, gen: torch.Generator, dev: torch.device
) -> Callable[[], object]:
    """``layer`` on a fresh input of ``job`` (``kin`` channels, ``batch``), laid out as an exported
    model feeds it (NHWC on the CPU)."""
    x = _input(job, kin, batch, gen).to(dev)
    if x.dim() == 4 and dev.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return partial(layer, x)


def _bound(call: Callable[[], object]) -> Callable[[], object]:
    """An ONNX Runtime session's call, whose input is bound already: the same call every pass."""
    return call


def time_in_rounds(
    calls: Sequence[Callable[[], Callable[[], object]]],
    labels: Sequence[str],
    settings: MeasureSettings,
    on_step: Callable[[str], None] | None = None,
) -> list[list[float]]:
    """Samples of every task, in ``settings.rounds`` passes over all of them, each pass taking its
    share of the repeats (``calls[i]()`` gives task ``i``'s call for one pass, e.g. on a fresh input),
    so load that changes while measuring spreads over every task alike."""
    rounds = max(1, settings.rounds)
    per_round = -(-settings.repeats // rounds)
    dev = torch.device(settings.device)
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, make in enumerate(calls):
            samples[i] += sample_times(
                make(), warmup=settings.warmup, repeats=per_round, device=dev, min_time_s=settings.min_time_s / rounds
            )
            if on_step is not None:
                on_step(labels[i])
    return samples


def measure_jobs(
    jobs: Sequence[LayerJob], settings: MeasureSettings, on_step: Callable[[str], None] | None = None
) -> list[LutEntry]:
    """Time every job at every executed pair, grid point and batch; one entry per measurement.

    The measurements run in ``settings.rounds`` passes over the whole table, each taking its
    share of the repeats, and every entry's median is over all its samples: load that changes
    while the table is measured (a shared machine) then spreads over all entries alike.
    """
    from hwsbs.export.kernels import resolve_backend

    backend = resolve_backend(settings.backend, settings.device)
    pairs = executed_pairs(backend, settings.runtime, settings.round_8bit_weights)
    dev = torch.device(settings.device)
    gen = torch.Generator().manual_seed(0)
    tasks: list[tuple[LayerJob, int, int, int, int, int, nn.Module | Callable[[], object]]] = []
    for job in jobs:
        for kin, kout in job.points():
            torch.manual_seed(len(tasks))
            base = _base_module(job, kin, kout)
            example = _input(job, kin, 2, gen)
            for batch in settings.batches:
                shape = tuple(_input(job, kin, batch, gen).shape)
                for w, a, _ in pairs:
                    tasks.append((job, kin, kout, batch, w, a, _measured(job, base, w, a, example, settings, shape)))
    calls = [
        partial(layer_call, layer, job, kin, batch, gen, dev)
        if isinstance(layer, nn.Module)
        else partial(_bound, layer)
        for job, kin, kout, batch, w, a, layer in tasks
    ]
    labels = [f"{job.signature} {w}/{a} {kin}->{kout} b{batch}" for job, kin, kout, batch, w, a, _ in tasks]
    samples = time_in_rounds(calls, labels, settings, on_step)
    entries = []
    for (job, kin, kout, batch, w, a, _), times in zip(tasks, samples):
        timing = summarise_times(times)
        entries.append(
            LutEntry(
                signature=job.signature,
                w_bits=w,
                a_bits=a,
                kept_in=kin,
                kept_out=kout,
                batch=batch,
                mean_s=timing.median_s,
                std_s=timing.std_s,
            )
        )
    return entries


def make_table(entries: list[LutEntry], device: str, method: str) -> LookupTable:
    """The validated table (fallback ``next_wider``: unmeasured pairs run on the next wider kernel)."""
    return LookupTable(device=device, method=method, fallback="next_wider", entries=entries)
