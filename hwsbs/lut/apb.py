"""``hwsbs lut build --apb``: time APB layers as ``hwsbs export`` runs them, over the outlier share.

For every conv (ungrouped) and linear signature of the planned jobs, at full channels, a
synthetic APB layer is built (:func:`hwsbs.apb.format.make_apb_layer` on random weights of the
layer's shape), its mask frozen with exactly ``round(share * weights)`` full-precision weights
(those farthest from ``alpha``, as APB's band rule picks them), exported with
:func:`hwsbs.export.apb.apb_record` and timed as the :class:`~hwsbs.export.apb.APBKernelLayer`
that :func:`~hwsbs.export.apb.exported_layer` makes of it (bitwise AND + popcount, CSR outliers,
the ReLU it fuses in the model). The entries go to the table's optional ``apb`` section, which
the ``lut`` cost model interpolates in the share (:mod:`cost_models.lut_apb`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import torch
from torch import Tensor

from hardware_profiles.lut_table import LutAPBEntry
from hwsbs.apb.format import apb_alpha_delta, make_apb_layer
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION
from hwsbs.errors import ConfigError
from hwsbs.export.apb import apb_record, exported_layer
from hwsbs.export.layers import ExportedLayer
from hwsbs.methods.apb import APB_DEFAULT_ACT_BITS
from hwsbs.quant.layers import SBSConv2d, SBSLinear

from .builder import LayerJob, MeasureSettings, _base_module, _input, layer_call, time_in_rounds
from .timing import summarise_times

__all__ = [
    "DEFAULT_APB_SHARES",
    "add_apb_argument",
    "APB_DEFAULT_ACT_BITS",
    "apb_jobs",
    "apb_layer",
    "apb_shares_option",
    "apb_task_count",
    "freeze_outliers",
    "measure_apb",
    "parse_apb_shares",
]

#: Outlier shares ``lut build --apb`` measures by default (0, 1, 2, 5 and 10 % of the weights).
DEFAULT_APB_SHARES: Final = (0.0, 0.01, 0.02, 0.05, 0.1)


def parse_apb_shares(text: str) -> tuple[float, ...]:
    """``--apb 0,1,2,5,10``: percentages of full-precision weights, as sorted distinct shares.

    Raises:
        ConfigError: not numbers, outside 0 <= p < 100, or fewer than two distinct values (the
            cost model needs a slope).
    """
    try:
        shares = sorted({float(t) / 100 for t in text.replace(" ", "").split(",") if t})
    except ValueError:
        raise ConfigError(f"--apb: expected comma-separated percentages like 0,1,2,5,10, got {text!r}") from None
    if len(shares) < 2 or shares[0] < 0 or shares[-1] >= 1:
        raise ConfigError(f"--apb: expected at least two distinct percentages in 0 <= p < 100, got {text!r}")
    return tuple(shares)


def add_apb_argument(parser: argparse.ArgumentParser) -> None:
    """``lut build``'s ``--apb [PERCENTS]`` (read back with :func:`apb_shares_option`)."""
    parser.add_argument(
        "--apb",
        nargs="?",
        const=",".join(f"{100 * s:g}" for s in DEFAULT_APB_SHARES),
        metavar="PERCENTS",
        help=f"also time conv/linear shapes as {APB_DEFAULT_ACT_BITS}-bit-input APB layers (hwsbs export's "
        "kernel) at these outlier percentages (no value: %(const)s), so the lut cost model prices --method apb",
    )


def apb_shares_option(percents: str | None, runtime: str = "torch") -> tuple[float, ...]:
    """The shares of ``lut build --apb [PERCENTS]`` (none without the option).

    Raises:
        ConfigError: bad percentages (:func:`parse_apb_shares`), or a runtime other than torch.
    """
    if percents is None:
        return ()
    if runtime != "torch":
        raise ConfigError(f"--apb: APB layers run on hwsbs's own kernels; drop --runtime {runtime}")
    return parse_apb_shares(percents)


def apb_jobs(jobs: Sequence[LayerJob]) -> list[LayerJob]:
    """The jobs an APB kernel can run: ungrouped convolutions and linear layers."""
    return [j for j in jobs if j.kind == "linear" or (j.kind == "conv" and j.groups == 1)]


def _full(job: LayerJob) -> tuple[int, int]:
    return max(job.kin or {job.in_channels}), max(job.kout or {job.out_channels})


@torch.no_grad()
def freeze_outliers(layer: Any, count: int) -> int:
    """Freeze an APB layer's mask with ``count`` full-precision weights: those farthest from
    alpha (largest ``| |w| - alpha |``, what APB's band rule keeps at the delta giving that count).

    Returns:
        ``count``, clamped to the layer's weights.
    """
    w = layer.weight.detach()
    alpha, _ = apb_alpha_delta(layer)
    count = min(max(int(count), 0), w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if count > 0:
        mask[torch.topk((w.abs() - alpha).abs().flatten(), count).indices] = False
    layer.apb_mask.copy_(mask.view_as(w))
    layer.apb_frozen.fill_(True)
    return count


def apb_layer(
    job: LayerJob, share: float, a_bits: int, example: Tensor, settings: MeasureSettings, seed: int = 0
) -> tuple[ExportedLayer, int]:
    """The job's layer at full channels as an exported APB layer with ``share`` outliers, and
    their count (exactly what :func:`hwsbs.export.export_model` runs for a frozen APB layer)."""
    torch.manual_seed(seed)
    kin, kout = _full(job)
    base = _base_module(job, kin, kout)
    cls = SBSConv2d if job.kind == "conv" else SBSLinear
    layer = cls.from_module(base, DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION, 1.0)  # type: ignore[arg-type]  # a Conv2d for a conv job, else a Linear
    layer._maybe_calibrate(example)
    layer.act_signed.fill_(job.act_signed)
    layer.set_fixed(1, a_bits)
    make_apb_layer(layer)
    count = freeze_outliers(layer, round(share * layer.weight.numel()))
    exported = exported_layer(apb_record("apb", layer, None), settings.backend, settings.device)
    if job.activation is not None:  # as inside the exported model
        exported.fuse_activation(job.activation)
    return exported.eval(), count


def apb_task_count(jobs: Sequence[LayerJob], settings: MeasureSettings, shares: Sequence[float]) -> int:
    """Progress steps :func:`measure_apb` reports."""
    return len(apb_jobs(jobs)) * len(shares) * len(settings.batches) * max(1, settings.rounds)


def measure_apb(
    jobs: Sequence[LayerJob],
    settings: MeasureSettings,
    shares: Sequence[float] = DEFAULT_APB_SHARES,
    a_bits: int = APB_DEFAULT_ACT_BITS,
    on_step: Callable[[str], None] | None = None,
) -> list[LutAPBEntry]:
    """Time every APB-capable job at every share and batch (full channels); one entry each.

    As :func:`hwsbs.lut.builder.measure_jobs`: ``settings.rounds`` passes over all of them, each
    with its share of the repeats, medians over all samples (``settings.backend`` resolved).

    Raises:
        ConfigError: ``settings.runtime`` is not ``torch`` (ONNX export has no APB layers).
    """
    if settings.runtime != "torch":
        raise ConfigError(f"--apb: APB layers run on hwsbs's own kernels, not --runtime {settings.runtime}")
    dev = torch.device(settings.device)
    gen = torch.Generator().manual_seed(0)
    tasks: list[tuple[LayerJob, float, int, ExportedLayer]] = []
    for j, job in enumerate(apb_jobs(jobs)):
        kin, _ = _full(job)
        example = _input(job, kin, 2, gen)
        counts: set[int] = set()
        for share in shares:
            layer, count = apb_layer(job, share, a_bits, example, settings, seed=j)
            weights = max(int(layer.record.weight.numel()), 1)
            if count in counts:  # a small layer: two shares round to the same outlier count
                continue
            counts.add(count)
            with torch.no_grad():  # numba compiles on the first call: not in any sample
                layer_call(layer, job, kin, settings.batches[0], gen, dev)()  # the layout that is timed
            for batch in settings.batches:
                tasks.append((job, count / weights, batch, layer))
    samples = time_in_rounds(
        [partial(layer_call, layer, job, _full(job)[0], batch, gen, dev) for job, _, batch, layer in tasks],
        [f"{job.signature} apb {100 * share:.3g}% b{batch}" for job, share, batch, _ in tasks],
        settings,
        on_step,
    )
    entries = []
    for (job, share, batch, _), times in zip(tasks, samples):
        timing = summarise_times(times)
        kin, kout = _full(job)
        entries.append(
            LutAPBEntry(
                signature=job.signature,
                a_bits=a_bits,
                fp_share=share,
                kept_in=kin,
                kept_out=kout,
                batch=batch,
                mean_s=timing.median_s,
                std_s=timing.std_s,
            )
        )
    return entries
