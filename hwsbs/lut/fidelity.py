"""Predicted against measured: random configurations, exported and timed end to end.

The same measured latencies are compared with every profile given, so a measured table and an
analytic model are judged on identical data. Metrics: mean absolute percentage error (MAPE),
Spearman rank correlation (does the model order configurations as the device does?), share of
configurations within +-10 % of measured, and the median predicted/measured ratio.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import spearmanr

from cost_models import cost_model_for
from hardware_profiles import load_profile
from hardware_profiles.lut_table import LookupTable
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION
from hwsbs.export import ModelSpec, compressed_model, export_model
from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.convert import convert_model

from .configs import random_config
from .timing import fixed_threads, sample_times, summarise_times
from .whole_model import apply_term

__all__ = ["Measured", "ProfileFit", "draw_configs", "measure_configs", "fit_profile", "summarise", "report_dict"]


@dataclass
class Measured:
    """One configuration's measured end-to-end latency."""

    index: int
    config: CompressionConfig
    median_s: float
    std_s: float
    int8_layers: int  # layers on an integer kernel in the export
    mac_fraction: float  # MACs kept relative to the unpruned model
    mean_bits: float  # MAC-weighted mean of max(w_bits, a_bits)


@dataclass
class ProfileFit:
    """One profile's predictions against the measurements, with the summary metrics."""

    hw: str
    profile: str
    cost_model: str
    unit: str
    predicted: list[float]
    measured: list[float]
    summary: dict[str, float] = field(default_factory=dict)
    layers_only: dict[str, float] | None = None  # the summary without the table's whole-model term


def draw_configs(
    spec: ModelSpec,
    n: int,
    seed: int,
    bits: Sequence[int] = DEFAULT_BITS,
    batch: int = 1,
    group_size: int = DEFAULT_GROUP_SIZE,
    max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION,
) -> list[CompressionConfig]:
    """``n`` random configurations (bits and pruning) of ``spec``'s model, reproducible by ``seed``."""
    space = convert_model(
        spec.build(), spec.example(), bits, group_size=group_size, max_prune_fraction=max_prune_fraction, prune=True
    )
    rng = random.Random(seed)
    return [
        random_config(
            space, rng, bits, name=spec.name, group_size=group_size, max_prune_fraction=max_prune_fraction, batch=batch
        )
        for _ in range(n)
    ]


def _mac_stats(config: CompressionConfig) -> tuple[float, float]:
    full = sum(d.shape.macs() for d in config.layers)
    kept = [d.shape.macs(d.state.kept_in, d.kept_out) for d in config.layers]
    bits = sum(k * max(d.w_bits, d.a_bits) for k, d in zip(kept, config.layers))
    return sum(kept) / full if full else 1.0, bits / sum(kept) if sum(kept) else 0.0


def measure_configs(
    spec: ModelSpec,
    configs: Sequence[CompressionConfig],
    *,
    batch: int = 1,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 20,
    backend: str = "auto",
    device: str = "cpu",
    on_step: Callable[[], None] | None = None,
    runtime: str = "torch",
    round_8bit_weights: bool = False,
) -> list[Measured]:
    """Export each configuration (untrained weights: latency does not depend on their values) and
    time the whole models on one ``batch``-sized input, side by side: ``repeats`` rounds of one
    call per configuration, so load that drifts during the measurement hits them all alike.
    ``on_step`` is called after each export and after each round. ``runtime="onnxruntime"``
    times the ``export --format onnx`` models in ONNX Runtime sessions with ``threads`` intra-op
    threads (one inter-op thread, sequential), 8-bit weights rounded onto int8 with
    ``round_8bit_weights``."""
    dev = torch.device(device)
    with fixed_threads(threads):
        x = spec.example(batch).to(dev)
        exported: list[Any] = []
        int8_counts = []
        for config in configs:
            if runtime == "onnxruntime":
                m, count = _ort_model(spec, config, not round_8bit_weights)
            else:
                m = export_model(compressed_model(spec, config), spec.example(), backend=backend, device=device)
                count = sum(r.path == "int8" for r in m.records)
            exported.append(m)
            int8_counts.append(count)
            if on_step is not None:
                on_step()
        samples: list[list[float]] = [[] for _ in configs]
        for m in exported:
            sample_times(lambda m=m: m(x), warmup=warmup, repeats=0, device=dev)  # type: ignore[misc]  # mypy cannot infer lambdas with default-bound arguments
        for _ in range(max(repeats, 1)):
            for i, m in enumerate(exported):
                samples[i] += sample_times(lambda m=m: m(x), warmup=0, repeats=1, device=dev)  # type: ignore[misc]  # mypy cannot infer lambdas with default-bound arguments
            if on_step is not None:
                on_step()
    results = []
    for i, (config, count, times) in enumerate(zip(configs, int8_counts, samples)):
        timing = summarise_times(times)
        frac, mean_bits = _mac_stats(config)
        results.append(Measured(i, config, timing.median_s, timing.std_s, count, frac, mean_bits))
    return results


def _ort_model(spec: ModelSpec, config: CompressionConfig, exact_8bit_weights: bool = True) -> tuple[Any, int]:
    """The configuration as an ONNX Runtime session (called like a torch model) and its int8 layer count."""
    from hwsbs.export.onnx_export import export_onnx
    from hwsbs.export.onnx_run import OrtModule, ort_session

    # Integer edges: the fast deploy path, whose fused kernels the ORT table measures.
    onnx_export = export_onnx(
        compressed_model(spec, config),
        spec.example(),
        spec=spec,
        integer_edges=True,
        exact_8bit_weights=exact_8bit_weights,
    )
    count = sum(r["path"] == "int8" for r in onnx_export.layer_table())
    return OrtModule(ort_session(onnx_export.to_bytes(), torch.get_num_threads())), count


def summarise(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """MAPE, Spearman rho (and its p-value), share within +-10 %, median predicted/measured."""
    pairs = [(p, m) for p, m in zip(predicted, measured) if m > 0]
    errors = [abs(p - m) / m for p, m in pairs]
    ratios = sorted(p / m for p, m in pairs)
    out: dict[str, float] = {
        "n": float(len(pairs)),
        "mape": sum(errors) / len(errors) if errors else float("nan"),
        "within_10pct": sum(e <= 0.10 for e in errors) / len(errors) if errors else float("nan"),
        "median_ratio": ratios[len(ratios) // 2] if ratios else float("nan"),
    }
    if len(pairs) >= 3:
        rho, pvalue = spearmanr([p for p, _ in pairs], [m for _, m in pairs])
        out["spearman"], out["spearman_p"] = float(rho), float(pvalue)
    else:
        out["spearman"] = out["spearman_p"] = float("nan")
    return out


def fit_profile(hw: str, measured: Sequence[Measured], batch: int, cost: str | None = None) -> ProfileFit:
    """Predict every measured configuration with ``hw``'s cost model (or ``cost``) at ``batch``."""
    profile = load_profile(hw)
    model = cost_model_for(profile, cost)
    table = getattr(model, "lookup_table", None)
    predicted, layers_only = [], []
    for m in measured:
        cfg = m.config
        cfg.batch = batch
        layers_only.append(cfg.cost(model))
        term = table.whole_model_term(cfg.model, batch) if isinstance(table, LookupTable) else None
        predicted.append(apply_term(term, layers_only[-1]))
    times = [m.median_s for m in measured]
    fit = ProfileFit(hw, profile.name, model.name, model.unit, predicted, times)
    if predicted != layers_only and model.unit == "s":  # the table's whole-model term was applied
        fit.layers_only = summarise(layers_only, times)
    fit.summary = (
        summarise(predicted, times)
        if model.unit == "s"
        else {
            "n": float(len(times)),
            **{k: v for k, v in summarise(predicted, times).items() if k.startswith("spearman")},
        }
    )
    return fit


def report_dict(
    spec: ModelSpec, measured: Sequence[Measured], fits: Sequence[ProfileFit], settings: dict[str, Any]
) -> dict[str, Any]:
    """Everything as plain JSON data."""
    return {
        "model": spec.to_dict(),
        "settings": settings,
        "configs": [
            {
                "index": m.index,
                "measured_s": m.median_s,
                "measured_std_s": m.std_s,
                "int8_layers": m.int8_layers,
                "layers": len(m.config.layers),
                "mac_fraction": m.mac_fraction,
                "mean_bits": m.mean_bits,
                "predicted": {f.profile: f.predicted[i] for f in fits},
            }
            for i, m in enumerate(measured)
        ],
        "profiles": [
            {
                "hw": f.hw,
                "profile": f.profile,
                "cost_model": f.cost_model,
                "unit": f.unit,
                **f.summary,
                **({"layers_only": f.layers_only} if f.layers_only is not None else {}),
            }
            for f in fits
        ],
    }
