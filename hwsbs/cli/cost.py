"""``hwsbs cost``: a found configuration's cost on one or more profiles, next to uniform 8-bit and
full precision, so a configuration found for one device can be priced on others."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rich.table import Table

from cost_models import CostModel, cost_model_for
from cost_models.units import format_cost
from hardware_profiles import load_profile
from hwsbs.errors import ConfigError
from hwsbs.sbs.channel_config import show_w_bits
from hwsbs.sbs.config_io import CompressionConfig, load_config

from .profiles import stdout_console

__all__ = ["add_parser", "cost_report"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``hwsbs cost``."""
    p = subparsers.add_parser("cost", help="cost of a found configuration on hardware profiles")
    p.add_argument("--config", required=True, metavar="FILE", help="config.yaml written by a search")
    p.add_argument(
        "--hw",
        action="append",
        required=True,
        metavar="PROFILE",
        help="built-in profile name or profile file; repeat to compare devices",
    )
    p.add_argument("--cost", default=None, metavar="NAME", help="cost model overriding each profile's default")
    p.add_argument("--batch", type=int, default=None, help="batch size to price at (default: the config's)")
    p.add_argument("--layers", action="store_true", help="add a per-layer breakdown")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(handler=_run)


def _ratio(reference: float, value: float) -> float | None:
    """``reference / value`` (how many times cheaper the configuration is), None when undefined."""
    if value <= 0 or not math.isfinite(value) or not math.isfinite(reference):
        return None
    return reference / value


def _layer_rows(config: CompressionConfig, model: CostModel) -> list[dict[str, Any]]:
    costs = config.layer_costs(model)
    eight = config.uniform(8).layer_costs(model)
    full = config.full_precision().layer_costs(model)
    total = sum(costs)
    rows = []
    for d, c, e, f in zip(config.layers, costs, eight, full, strict=True):
        rows.append(
            {
                "name": d.shape.name,
                "kind": d.shape.kind,
                "w_bits": list(d.group_w_bits) if d.group_w_bits else d.w_bits,  # a list: per channel group
                "a_bits": d.a_bits,
                "kept_in": d.state.kept_in,
                "in_channels": d.shape.in_channels,
                "kept_out": d.kept_out,
                "out_channels": d.shape.out_channels,
                "cost": c,
                "uniform8": e,
                "full_precision": f,
                "share": c / total if total > 0 else None,
            }
        )
    return rows


def cost_report(
    config: CompressionConfig, hw: list[str], cost: str | None = None, layers: bool = False
) -> list[dict[str, Any]]:
    """Per profile: the configuration's cost, uniform 8-bit and full-precision costs and ratios.

    Args:
        config: the configuration (its ``batch`` is the batch size priced).
        hw: built-in profile names or profile files.
        cost: cost model name overriding each profile's default (``--cost``).
        layers: include a per-layer breakdown under ``"layers"``.

    Raises:
        ProfileError, CostModelError: a profile that cannot be loaded, or a model it cannot build.
    """
    results = []
    for spec in hw:
        profile = load_profile(spec)
        model = cost_model_for(profile, cost)
        found = config.cost(model)
        eight = config.uniform(8).cost(model)
        full = config.full_precision().cost(model)
        entry: dict[str, Any] = {
            "hw": spec,
            "profile": profile.name,
            "cost_model": model.name,
            "metric": model.metric,
            "unit": model.unit,
            "cost": found,
            "uniform8": eight,
            "full_precision": full,
            "uniform8_over_cost": _ratio(eight, found),
            "full_precision_over_cost": _ratio(full, found),
        }
        if layers:
            entry["layers"] = _layer_rows(config, model)
        results.append(entry)
    return results


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def _print_tables(config_path: str, config: CompressionConfig, results: list[dict[str, Any]], layers: bool) -> None:
    console = stdout_console()
    table = Table(title=f"{config_path}: {len(config.layers)} layers, batch {config.batch}")
    for column in (
        "profile",
        "cost model",
        "this config",
        "uniform 8-bit",
        "full precision",
        "8-bit / config",
        "FP / config",
    ):
        table.add_column(column, justify="right" if column not in ("profile", "cost model") else "left")
    for r in results:
        u = r["unit"]
        table.add_row(
            r["profile"],
            f"{r['cost_model']} ({r['metric']})",
            format_cost(r["cost"], u),
            format_cost(r["uniform8"], u),
            format_cost(r["full_precision"], u),
            _times(r["uniform8_over_cost"]),
            _times(r["full_precision_over_cost"]),
        )
    console.print(table)
    if not layers:
        return
    for r in results:
        u = r["unit"]
        lt = Table(title=f"{r['profile']}: per layer ({r['cost_model']})")
        for column in ("layer", "w/a bits", "kept out", "kept in", "cost", "share", "8-bit", "FP"):
            lt.add_column(column, justify="left" if column == "layer" else "right")
        for row in r["layers"]:
            share = "-" if row["share"] is None else f"{100 * row['share']:.1f}%"
            lt.add_row(
                row["name"],
                f"{show_w_bits(row['w_bits'])}/{row['a_bits']}",
                f"{row['kept_out']}/{row['out_channels']}",
                f"{row['kept_in']}/{row['in_channels']}",
                format_cost(row["cost"], u),
                share,
                format_cost(row["uniform8"], u),
                format_cost(row["full_precision"], u),
            )
        console.print(lt)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.batch is not None:
        if args.batch < 1:
            raise ConfigError(f"--batch: expected a positive integer, got {args.batch}")
        config.batch = args.batch
    results = cost_report(config, list(args.hw), args.cost, args.layers)
    if args.json:
        doc = {"config": str(args.config), "model": config.model, "batch": config.batch, "results": results}
        print(json.dumps(doc, indent=2))
    else:
        _print_tables(str(args.config), config, results, args.layers)
    return 0
