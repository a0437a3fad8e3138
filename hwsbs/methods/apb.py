"""APB as a search method: every non-pinned Conv2d/Linear gets binary weights with full-precision
outliers, and the cost decides how many outliers each layer keeps (docs/method.md, "APB")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cost_models.base import CostModel, LayerShape, LayerState
from hwsbs.apb.format import apb_alpha_delta, fp_count, is_apb_layer, make_apb_layer, soft_fp_count
from hwsbs.errors import ConfigError
from hwsbs.quant.layers import SBSConv2d, SBSLayerMixin, SBSLinear
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision
from hwsbs.sbs.engine import log_cost_penalty, step_stats
from hwsbs.task import task_loss
from hwsbs.training import check_finite, make_sgd, split_decay

from .base import MethodContext, register_method, run_search_epochs

__all__ = ["apb", "APB_DEFAULT_ACT_BITS", "APB_DEFAULT_INIT_FP"]

#: Activation bits of APB layers (the existing activation quantiser); ``extra["apb_act_bits"]``.
APB_DEFAULT_ACT_BITS = 8
#: Share of each layer's weights outside the band at the start; ``extra["apb_init_fp"]``.
APB_DEFAULT_INIT_FP = 0.05
#: The cost slope per outlier is a forward difference over this share of the layer's weights
#: (exact for size; averages the step of tiled latency models).
_SLOPE_SHARE = 0.01


def _check_prices_apb(ctx: MethodContext) -> None:
    for obj in ctx.objectives:
        if not getattr(obj.cost_model, "prices_apb", False):
            raise ConfigError(
                f"--method apb: cost model {obj.cost_model.name!r} cannot price APB layers; use --cost size or apb_cpu, or a table built with hwsbs lut build --apb"
            )


def _apb_state(shape: LayerShape, layer: SBSLayerMixin, fp: int) -> LayerState:
    return LayerState(
        1, layer.fixed_a_bits, shape.in_channels, shape.out_channels, act_float=layer.act_float, fp_weights=fp
    )


class _APBCost:
    """The configuration's cost per objective, with outlier-count gradients for alpha and delta."""

    def __init__(self, ctx: MethodContext, names: list[str]) -> None:
        self.ctx, self.names = ctx, names
        batch = ctx.config.cost_batch
        self.fixed = [
            sum(
                o.cost_model.cached_layer_cost(ctx.space.shapes[n], d.state, batch)
                for n, d in zip(ctx.space.layer_names, ctx.space.decisions({}, {}))
                if n not in names
            )
            for o in ctx.objectives
        ]

    def _layer(self, cm: CostModel, name: str, fp: int) -> tuple[float, float]:
        shape, layer = self.ctx.space.shapes[name], self.ctx.space.layer(name)
        total = shape.weight_count()
        batch = self.ctx.config.cost_batch
        step = max(1, int(_SLOPE_SHARE * total))
        lo, hi = (fp, fp + step) if fp + step <= total else (max(fp - step, 0), fp)
        c_lo = cm.cached_layer_cost(shape, _apb_state(shape, layer, lo), batch)
        c_hi = cm.cached_layer_cost(shape, _apb_state(shape, layer, hi), batch)
        cost = cm.cached_layer_cost(shape, _apb_state(shape, layer, fp), batch)
        return cost, (c_hi - c_lo) / max(hi - lo, 1)

    def __call__(self) -> list[Tensor]:
        counts = {}
        for n in self.names:
            layer = self.ctx.space.layer(n)
            alpha, delta = apb_alpha_delta(layer)
            counts[n] = (fp_count(layer.weight, alpha, delta), soft_fp_count(layer.weight, alpha, delta))
        out = []
        for obj, fixed in zip(self.ctx.objectives, self.fixed):
            total: Tensor = torch.tensor(float(fixed), dtype=torch.float64)
            for n, (fp, soft) in counts.items():
                cost, slope = self._layer(obj.cost_model, n, fp)
                total = total + cost + slope * (soft - soft.detach()).double()
            out.append(total)
        return out

    def hard(self, objective: int = 0) -> float:
        return float(self()[objective].detach())


def _fit_to_target(ctx: MethodContext, names: list[str], cost: _APBCost) -> None:
    """Widen every band by one common factor (bisection) until the first objective's budget holds."""
    target = ctx.objectives[0].target
    if target is None or cost.hard() <= target:
        return
    layers: list[Any] = [ctx.space.layer(n) for n in names]
    start = [float(lay.apb_log_delta.detach()) for lay in layers]

    def set_factor(log_f: float) -> None:
        with torch.no_grad():
            for lay, s in zip(layers, start):
                lay.apb_log_delta.fill_(s + log_f)

    lo, hi = 0.0, 1.0
    set_factor(hi)
    while cost.hard() > target and hi < 64.0:
        lo, hi = hi, 2 * hi
        set_factor(hi)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        set_factor(mid)
        lo, hi = (mid, hi) if cost.hard() > target else (lo, mid)
    set_factor(hi)
    ctx.progress.log(
        f"APB: widened the bands to meet the budget ({cost.hard():.4g} {ctx.objectives[0].cost_model.unit})"
    )


@register_method(
    "apb",
    prunes=False,
    meets_target=True,  # _fit_to_target widens the bands until a reachable --target holds
    description="APB: binary weights with cost-driven sparse full-precision outliers",
)
def apb(ctx: MethodContext) -> CompressionConfig:
    """Train weights, alpha and delta of every non-pinned layer under the cost, then freeze the masks."""
    _check_prices_apb(ctx)
    cfg = ctx.config
    act_bits = int(ctx.extra.get("apb_act_bits", APB_DEFAULT_ACT_BITS))
    init_fp = float(ctx.extra.get("apb_init_fp", APB_DEFAULT_INIT_FP))
    names = []
    for name, layer in ctx.space.layers():
        if layer.pinned or not isinstance(layer, SBSConv2d | SBSLinear):
            continue
        if not is_apb_layer(layer):
            make_apb_layer(layer, init_fp)
        layer.set_fixed(1, layer.fixed_a_bits if layer.act_float else act_bits)
        names.append(name)
    if not names:
        raise ConfigError("--method apb: every layer is pinned; nothing to binarise")
    model = ctx.space.model
    apb_params = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1].startswith("apb_log_")]
    ids = {id(p) for p in apb_params}
    weights = make_sgd(*split_decay(model, ids), cfg.search_lr, cfg.weight_decay)
    bands = torch.optim.Adam(apb_params, lr=cfg.threshold_lr)
    cost = _APBCost(ctx, names)
    if ctx.resume_state is not None:
        weights.load_state_dict(ctx.resume_state["weights"])
        bands.load_state_dict(ctx.resume_state["bands"])

    def step(x: Tensor, y: Tensor, where: str) -> dict[str, float]:
        model.train()
        logits = model(x)
        ce = task_loss(logits, y)
        costs = cost()
        loss = ce + cfg.lam * log_cost_penalty(ctx.objectives, costs).to(ce.dtype)
        check_finite(loss, where)
        weights.zero_grad(set_to_none=True)
        bands.zero_grad(set_to_none=True)
        loss.backward()
        weights.step()
        bands.step()
        return step_stats(loss, ce, logits, y, costs)

    def state() -> dict[str, Any]:
        return {"weights": weights.state_dict(), "bands": bands.state_dict()}

    run_search_epochs(ctx, step, state, "search")
    _fit_to_target(ctx, names, cost)
    return _config(ctx, names)


#: For hwsbs.testing.check_search_method: APB runs only on cost models that price it
#: (``prices_apb``), and its searched layers have 1-bit (binary) weights.
apb.conformance = {"cost": "size", "cost_flag": "prices_apb", "w_bits": (1,)}  # type: ignore[attr-defined]  # read by hwsbs.testing


def _config(ctx: MethodContext, names: list[str]) -> CompressionConfig:
    """Freeze every mask and read the outlier counts into the configuration."""
    decisions: list[LayerDecision] = []
    for d in ctx.space.decisions({}, {}):
        name = d.shape.name
        if name not in names:
            decisions.append(d)
            continue
        layer: Any = ctx.space.layer(name)
        layer.apb_freeze()
        fp = int((~layer.apb_mask).sum())
        decisions.append(LayerDecision(d.shape, 1, d.a_bits, [], d.kept_in, d.w_group, d.act_float, fp_weights=fp))
    return ctx.make_config(decisions)
