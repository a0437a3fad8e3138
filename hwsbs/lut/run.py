"""``hwsbs lut build`` as a function: plan, measure with a progress bar, write table and profile."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cost_models.base import LayerShape
from hardware_profiles import load_profile
from hardware_profiles.lut_table import WholeModelTerm
from hardware_profiles.schema import ChannelSplit, HardwareProfile
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE
from hwsbs.errors import ConfigError
from hwsbs.export import ModelSpec
from hwsbs.export.kernels import resolve_backend
from hwsbs.progress import progress_bar

from .apb import APB_DEFAULT_ACT_BITS, apb_task_count, measure_apb
from .builder import LayerJob, MeasureSettings, executed_pairs, make_table, measure_jobs, plan_jobs
from .machine import describe_machine, machine_info
from .profile_io import profile_name_for, write_profile, write_table
from .split import (
    DEFAULT_SPLIT_LAYERS,
    SplitFit,
    check_split_options,
    measure_channel_split,
    split_jobs,
    split_task_count,
)
from .timing import fixed_threads
from .whole_model import fit_term

__all__ = ["BuildResult", "build_profile"]


@dataclass
class BuildResult:
    """What ``lut build`` wrote."""

    profile: HardwareProfile
    profile_path: Path
    table_path: Path
    entries: int
    signatures: int
    seconds: float
    channel_split: SplitFit | None = None  # the measured split overhead (``channel_split=True``)


def _count(jobs, settings: MeasureSettings, pairs: int) -> int:
    return sum(len(j.points()) for j in jobs) * len(settings.batches) * pairs * max(1, settings.rounds)


def build_profile(
    specs: Sequence[ModelSpec],
    out: str | Path,
    settings: MeasureSettings,
    *,
    threads: int | None,
    grid: int = 3,
    bits: Sequence[int] = DEFAULT_BITS,
    group_size: int = DEFAULT_GROUP_SIZE,
    max_prune_fraction: float = 0.5,
    command: str = "",
    progress: bool = True,
    table_out: str | Path | None = None,
    extra_shapes: Sequence[LayerShape] = (),
    whole_model_configs: int = 0,
    apb_shares: Sequence[float] = (),
    apb_act_bits: int = APB_DEFAULT_ACT_BITS,
    channel_split: bool = False,
    split_layers: int = DEFAULT_SPLIT_LAYERS,
) -> BuildResult:
    """Measure ``specs``' layers and write ``out`` (a profile) plus its table (``tables/NAME.yaml``
    next to it unless ``table_out``). ``whole_model_configs`` > 0 also times that many random
    configurations of each model end to end per batch and stores the fitted whole-model term
    (:mod:`hwsbs.lut.whole_model`) in the table. ``apb_shares`` (e.g.
    :data:`~hwsbs.lut.apb.DEFAULT_APB_SHARES`) also times every conv/linear shape as an APB layer
    at those outlier shares and ``apb_act_bits`` (:mod:`hwsbs.lut.apb`, the table's ``apb`` section).
    ``channel_split`` then also times up to ``split_layers`` layer shapes split as the export runs
    a channel-wise layer and writes the fitted ``channel_split`` block into the profile
    (:mod:`hwsbs.lut.split`).

    Raises:
        ConfigError: a bad option (device not available, bad output name, ``channel_split`` with
            a runtime other than torch, fewer than two ``bits`` or no layer to split).
    """
    dev = torch.device(settings.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    out_path = Path(out)
    name = profile_name_for(out_path)
    table_path = Path(table_out) if table_out else out_path.parent / "tables" / f"{name}.yaml"
    if channel_split:  # before minutes of measuring
        check_split_options(settings.runtime, bits)
    start = time.perf_counter()
    with fixed_threads(threads):
        backend = resolve_backend(settings.backend, settings.device)
        settings = MeasureSettings(**{**settings.__dict__, "backend": backend})
        if settings.runtime != "torch" and dev.type != "cpu":
            raise ConfigError(f"--runtime {settings.runtime}: measures the CPU only (--device cpu)")
        machine = machine_info(settings.device, torch.get_num_threads(), settings.runtime)
        jobs = plan_jobs(
            specs,
            bits,
            group_size=group_size,
            max_prune_fraction=max_prune_fraction,
            grid=grid,
            extra_shapes=extra_shapes,
        )
        to_split = split_jobs(jobs, group_size, split_layers) if channel_split else []
        if channel_split and not to_split:
            raise ConfigError(
                "--channel-split: no layer to split (an ungrouped conv or linear layer with more than "
                "--group-size output channels)"
            )
        pairs = executed_pairs(backend, settings.runtime, settings.round_8bit_weights)
        total = _count(jobs, settings, len(pairs)) + (apb_task_count(jobs, settings, apb_shares) if apb_shares else 0)
        with progress_bar("measuring", "what", disable=not progress) as bar:
            task = bar.add_task("lut", total=total, what="")
            entries = measure_jobs(jobs, settings, lambda what: bar.update(task, advance=1, what=what))
            apb = (
                measure_apb(jobs, settings, apb_shares, apb_act_bits, lambda w: bar.update(task, advance=1, what=w))
                if apb_shares
                else []
            )
    device_line = describe_machine(machine)
    paths = "; ".join(f"{w}/{a}: {label}" for w, a, label in pairs)
    how = (
        f"run by {machine['runtime']} as a single-layer QDQ graph of hwsbs export --format onnx (uint8 codes in "
        f"and out, intra-op threads {machine['threads']}, inter-op 1, sequential)"
        if settings.runtime != "torch"
        else "timed alone (NHWC input)"
    )
    method = (
        f"each layer exported as by hwsbs export (with the ReLU/ReLU6 it fuses into most layers of that shape) "
        f"and {how} in {settings.rounds} passes over the table, each with {settings.warmup} "
        f"warm-up calls and its share of >= {settings.repeats} timed calls (and >= "
        f"{settings.min_time_s * 1e3:g} ms in total), torch threads "
        f"{machine['threads']}; mean_s = median, std_s = standard deviation; pairs measured: {paths}; other pairs run on "
        f"the next wider measured one (fallback next_wider)"
    )
    if apb_shares:
        shares = ", ".join(f"{100 * s:g}" for s in apb_shares)
        method += (
            f"; apb: conv/linear shapes at full channels as APB layers (hwsbs export's APBKernelLayer, "
            f"{apb_act_bits}-bit inputs) with {shares} % of the weights in full precision"
        )
    table = make_table(entries, device_line, method).model_copy(update={"apb": apb})
    date = time.strftime("%Y-%m-%d")
    models = ", ".join(s.describe() for s in specs)
    if extra_shapes:
        models += f" and {len(extra_shapes)} extra shapes ({', '.join(s.name for s in extra_shapes)})"
    header = [
        f"Measured by hwsbs lut build on {date}; regenerate with the command below, do not edit by hand.",
        f"command: {command}" if command else "command: (API call)",
        f"machine: {device_line}",
        f"models: {models}",
    ]
    write_table(table, table_path, header)
    kind = "gpu" if dev.type == "cuda" else "cpu"
    description = (
        f"measured layer latencies: {machine.get('gpu', machine['cpu'])}, torch threads {machine['threads']}, "
        f"torch {machine['torch']} ({backend} int8 kernels)"
        if settings.runtime == "torch"
        else f"measured layer latencies: {machine['cpu']}, {machine['runtime']} QDQ, intra-op threads {machine['threads']}"
    )
    sources = [
        f"Measured with `{command or 'hwsbs.lut.build_profile'}` on {date} ({len(entries)} entries, "
        f"{len(jobs)} layer shapes of {models})",
        f"Machine: {device_line}",
        f"Method: {method}",
    ]

    def write(lines: list[str], split: ChannelSplit | None = None) -> HardwareProfile:
        return write_profile(
            out_path,
            name=name,
            kind=kind,
            table_path=table_path,
            header=header,
            description=description,
            sources=lines,
            channel_split=split,
        )

    profile = write(sources)
    fit = None
    if channel_split:  # needs the written table: its predictions for the parts
        fit = _measure_split(to_split, profile, settings, threads, bits, group_size, progress)
        how = _split_source(fit, machine, settings, models)
        line = f"channel_split: measured with `{command or 'hwsbs.lut.build_profile'}` on {date}: {how}"
        profile = write([*sources, line], fit.channel_split())
    if whole_model_configs > 0:
        terms = fit_whole_model_terms(specs, profile, settings, threads, whole_model_configs, bits, group_size)
        table = table.model_copy(update={"whole_model": terms})
        write_table(table, table_path, header)
        profile = load_profile(out_path)
    return BuildResult(profile, out_path, table_path, len(entries), len(jobs), time.perf_counter() - start, fit)


def _measure_split(
    jobs: list[LayerJob],
    profile: HardwareProfile,
    settings: MeasureSettings,
    threads: int | None,
    bits: Sequence[int],
    group_size: int,
    progress: bool,
) -> SplitFit:
    """:func:`~hwsbs.lut.split.measure_channel_split` with the build's threads and a progress bar."""
    widths = check_split_options(settings.runtime, bits)
    with fixed_threads(threads), progress_bar("measuring splits", "what", disable=not progress) as bar:
        task = bar.add_task("split", total=split_task_count(jobs, widths, group_size, settings), what="")
        return measure_channel_split(
            jobs,
            profile,
            settings,
            bits=bits,
            group_size=group_size,
            on_step=lambda w: bar.update(task, advance=1, what=w),
        )


def _split_source(fit: SplitFit, machine: dict[str, Any], settings: MeasureSettings, models: str) -> str:
    """The profile's ``sources`` line for a measured ``channel_split`` (how, where, on what)."""
    shapes = len({s.signature for s in fit.samples})
    batches = ", ".join(map(str, settings.batches))
    widths = ", ".join(map(str, fit.widths))
    return (
        f"{shapes} layer shapes of {models} exported as hwsbs export runs a channel-wise layer (one sub-layer "
        f"per weight width, concatenated and reordered, a ReLU after it unfused), split into the narrowest and "
        f"widest of {widths} bits (and all of them where the layer has the groups), groups of {fit.group_size} "
        f"output channels taking the widths in turn, {fit.a_bits}-bit inputs, timed as the table ({settings.rounds} "
        f"passes, {settings.warmup} warm-up calls, >= {settings.repeats} timed calls, medians) on {machine['cpu']}"
        f"{' / ' + machine['gpu'] if 'gpu' in machine else ''}, runtime {machine['runtime']} (torch "
        f"{machine['torch']}, {settings.backend} kernels), threads {machine['threads']}, batch {batches}; "
        + fit.describe()
    )


def fit_whole_model_terms(
    specs: Sequence[ModelSpec],
    profile: HardwareProfile,
    settings: MeasureSettings,
    threads: int | None,
    n: int,
    bits: Sequence[int] = DEFAULT_BITS,
    group_size: int = DEFAULT_GROUP_SIZE,
    seed: int = 1000,
) -> list[WholeModelTerm]:
    """Time ``n`` random configurations of each model end to end per batch (seed ``seed``, apart
    from ``lut check``'s default 0) and fit ``overhead + scale * sum(table)`` to them."""
    from cost_models import cost_model_for

    from .fidelity import draw_configs, measure_configs

    model = cost_model_for(profile)
    terms = []
    for spec in specs:
        for batch in settings.batches:
            configs = draw_configs(spec, n, seed, bits, batch, group_size)
            measured = measure_configs(
                spec,
                configs,
                batch=batch,
                threads=threads,
                warmup=settings.warmup,
                repeats=max(settings.repeats // 2, 3),
                backend=settings.backend,
                device=settings.device,
                runtime=settings.runtime,
                round_8bit_weights=settings.round_8bit_weights,
            )
            sums = [m.config.cost(model) for m in measured]
            terms.append(fit_term(spec.name, batch, sums, [m.median_s for m in measured]))
    return terms
