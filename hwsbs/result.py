"""What a search returns and writes: result.json, config.yaml, layers.png and a summary table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cost_models.base import CostModel
from hwsbs.apb.decision import apb_summary, binary_fraction
from hwsbs.sbs.config_io import CompressionConfig, save_config

__all__ = ["SearchResult", "cost_summary", "write_outputs"]


@dataclass
class SearchResult:
    """The outcome of one search, with the same content as ``result.json``."""

    hardware: str  # profile name
    cost_model: str  # cost model name
    metric: str  # what the cost measures
    unit: str  # unit of every cost
    accuracy: dict[str, float]  # {"full_precision", "compressed"}: top-1 as a fraction
    cost: dict[str, float]  # {"full_precision", "uniform_8bit", "compressed"}
    layers: list[dict[str, Any]]  # per-layer decisions and costs
    config: CompressionConfig  # the found configuration
    method: str = "sbs"  # search method
    run_dir: Path | None = None  # where the artefacts are
    model: nn.Module | None = field(default=None, repr=False)  # the fine-tuned compressed model
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch metrics
    extra_costs: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # other objectives' costs (as ``cost``, plus their "unit" and "metric")
    budget: dict[str, Any] | None = None  # {"target", "floor", "met", "reachable"} when a --target was set
    coverage: dict[str, Any] | None = None  # {"coverage": share of MACs quantised, "float_compute": [names]}
    perplexity: float | None = None  # language models: exp(mean validation cross-entropy per token), compressed model
    distributed: dict[str, Any] | None = None  # torchrun runs: {"processes", "backend", "ranks_agreed"}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hardware": self.hardware,
            "cost_model": self.cost_model,
            "metric": self.metric,
            "unit": self.unit,
            "method": self.method,
            "accuracy": dict(self.accuracy),
            "cost": dict(self.cost),
            "compression": {
                "vs_full_precision": self.cost["full_precision"] / self.cost["compressed"]
                if self.cost["compressed"]
                else None,
                "vs_uniform_8bit": self.cost["uniform_8bit"] / self.cost["compressed"]
                if self.cost["compressed"]
                else None,
            },
            "layers": list(self.layers),
            "history": list(self.history),
        }
        if self.extra_costs:
            out["extra_costs"] = self.extra_costs
        if self.budget is not None:
            out["budget"] = dict(self.budget)
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity
        if self.coverage is not None:
            out.update(self.coverage)
        if self.distributed is not None:
            out["distributed"] = dict(self.distributed)
        fraction = binary_fraction(self.config)
        if fraction is not None:  # APB runs: share of the APB layers' weights that are binary
            out["binary_fraction"] = fraction
        return out


def cost_summary(config: CompressionConfig, cost_model: CostModel) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Full precision, uniform 8-bit and compressed cost, plus the per-layer table."""
    layer_costs = config.layer_costs(cost_model)
    layers = [{**d.summary(), **apb_summary(d), "cost": c} for d, c in zip(config.layers, layer_costs)]
    costs = {
        "full_precision": config.full_precision().cost(cost_model),
        "uniform_8bit": config.uniform(8).cost(cost_model),
        "compressed": float(sum(layer_costs)),
    }
    return costs, layers


def plot_layers(result: SearchResult, path: Path) -> None:
    """Per-layer weight/activation bits and kept channel share, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer["name"] for layer in result.layers]
    idx = range(len(names))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(names) + 2), 5.5), sharex=True)
    width = 0.4
    w_bits = [max(b) if isinstance(b, list) else b for b in (layer["w_bits"] for layer in result.layers)]
    ax1.bar([i - width / 2 for i in idx], w_bits, width, label="weights")  # channel-wise: the widest group
    ax1.bar([i + width / 2 for i in idx], [layer["a_bits"] for layer in result.layers], width, label="activations")
    ax1.set_ylabel("bits")
    ax1.set_yscale("log", base=2)
    ax1.legend(loc="upper right")
    ax1.set_title(
        f"{result.method} on {result.hardware} ({result.cost_model}): "
        f"acc {result.accuracy['compressed']:.3f}, cost {result.cost['compressed']:.3g} {result.unit}"
    )
    kept = [layer["kept_out_channels"] / layer["out_channels"] for layer in result.layers]
    ax2.bar(list(idx), kept, color="tab:green")
    ax2.set_ylabel("kept output channels")
    ax2.set_ylim(0, 1.05)
    ax2.set_xticks(list(idx))
    ax2.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: SearchResult, run_dir: Path) -> None:
    """config.yaml, result.json (atomically) and layers.png in ``run_dir``."""
    save_config(result.config, run_dir / "config.yaml")
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    tmp.replace(run_dir / "result.json")
    plot_layers(result, run_dir / "layers.png")
