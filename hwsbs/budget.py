"""The budget (``--target``): one resolver for every method and report.

A budget is an absolute cost in the primary cost model's unit, given directly or as a share of
the uniform 8-bit cost (``30%``). :func:`floor_config` is the cheapest configuration a search
space allows (lowest bits, maximal pruning), which says whether a budget is reachable at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cost_models.base import CostModel
from hwsbs.config import MIN_TARGET_FRACTION, SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision
from hwsbs.sbs.convert import SearchSpace, searchable_shapes

__all__ = [
    "BUDGET_SLACK",
    "check_target",
    "check_costable",
    "uniform_cost",
    "resolve_target",
    "floor_config",
    "budget_report",
]

BUDGET_SLACK = 1e-9  # relative: a cost equal to the budget up to rounding meets it


def check_target(target: float | None, uniform_8bit: float, unit: str) -> None:
    """Refuse an absolute ``--target`` below ``MIN_TARGET_FRACTION`` of the uniform 8-bit cost.

    Raises:
        ConfigError: ``--target 1e-300: below 1e-30 of the uniform 8-bit cost (...)``.
    """
    if target is None or not (math.isfinite(uniform_8bit) and uniform_8bit > 0):
        return
    if target < MIN_TARGET_FRACTION * uniform_8bit:
        raise ConfigError(
            f"--target {target:g}: below {MIN_TARGET_FRACTION:g} of the uniform 8-bit cost "
            f"({uniform_8bit:.4g} {unit}); no configuration comes near it and the budget loss would "
            f"overflow; give a cost in {unit} or a share like 30%"
        )


def uniform_cost(space: SearchSpace, cm: CostModel, bits: int, batch: int) -> float:
    """Cost of every layer at ``bits`` (pinned layers too: the reference "uniform 8-bit")."""
    return CompressionConfig(space.uniform(bits), batch=batch).cost(cm)


def resolve_target(cfg: SearchConfig, space: SearchSpace, cm: CostModel, primary: bool = True) -> float | None:
    """The absolute budget on ``cm``: ``--target`` (primary objective only) or its share of uniform 8-bit."""
    if cfg.target is not None:
        return cfg.target if primary else None
    if cfg.target_fraction is not None:
        return cfg.target_fraction * uniform_cost(space, cm, 8, cfg.cost_batch)
    return None


def _largest_groups(space: SearchSpace, producer: str) -> list[int]:
    """The groups whose removal saves the most channels, up to the pruning cap."""
    sizes = space.layer(producer).group_sizes()
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    return sorted(order[: space.max_pruned_groups(producer)])


def floor_config(space: SearchSpace, bits: tuple[int, ...] | list[int], batch: int) -> CompressionConfig:
    """The cheapest configuration of ``space``: lowest bits everywhere, every producer at its cap."""
    lowest = min(bits)
    return CompressionConfig(
        space.decisions(
            {n: (lowest, lowest) for n in space.layer_names},
            {g.producer: _largest_groups(space, g.producer) for g in space.groups},  # none unless the method prunes
        ),
        batch=batch,
    )


def budget_report(
    cfg: SearchConfig, space: SearchSpace, cm: CostModel, found: CompressionConfig
) -> dict[str, Any] | None:
    """Whether ``found`` meets the budget, and the cheapest cost the space allows (None: no budget)."""
    target = resolve_target(cfg, space, cm)
    if target is None:
        return None
    floor = floor_config(space, cfg.bits, cfg.cost_batch).cost(cm)
    cost = found.cost(cm)
    slack = 1 + BUDGET_SLACK
    return {
        "target": target,
        "floor": floor,
        "cost": cost,
        "met": cost <= target * slack,
        "reachable": floor <= target * slack,
    }


def check_costable(
    model: nn.Module, example: torch.Tensor, cost_models: Sequence[CostModel], batch: int, target: float | None = None
) -> None:
    """Every cost model must price this model (a lookup table: every layer signature), and an
    absolute ``target`` must be a cost the primary one can approach, before anything is written."""
    param = next(model.parameters(), None)
    order, shapes = searchable_shapes(model, example if param is None else example.to(param.device))
    plain = CompressionConfig([LayerDecision(shapes[n], 8, 8) for n in order], batch=batch)
    for cm in cost_models:
        plain.cost(cm)
        plain.full_precision().cost(cm)
    if target is not None:  # the primary objective's budget
        cm = cost_models[0]
        check_target(target, plain.cost(cm), cm.unit)
