"""Single-path Bit Sharing: joint search of bits and pruning with learnable gates (the default)."""

from __future__ import annotations

from typing import cast

from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.derive import derive_config
from hwsbs.sbs.engine import SearchEngine
from hwsbs.sbs.steady_state import choice_to_config, fit_to_budget, price_choice, set_gates_to, steady_choice

from .base import MethodContext, register_method, run_search_epochs
from .completion import complete_under_ceiling
from .ilp import ilp_candidate

__all__ = ["sbs"]


@register_method(
    "sbs", prunes=True, meets_target=True, description="Single-path Bit Sharing: gates choose bits and pruned groups"
)
def sbs(ctx: MethodContext) -> CompressionConfig:
    """Train weights, clipping values and gate thresholds jointly, then read the steady state."""
    cfg = ctx.config
    engine = SearchEngine(
        ctx.space,
        ctx.objectives,
        cfg.lam,
        cfg.search_lr,
        cfg.threshold_lr,
        cfg.weight_decay,
        cfg.cost_batch,
        curvature=cfg.curvature,
        flip_probe=cfg.flip_probe,
    )
    if ctx.resume_state is not None:
        engine.load_state_dict(ctx.resume_state["engine"])
    elif cfg.init == "ilp":  # start from the sensitivity + integer-program configuration
        cand, cost, _ = ilp_candidate(ctx)
        set_gates_to(ctx.space, cand.bits, {p: len(g) for p, g in cand.pruned.items()})
        ctx.progress.log(f"SBS starts from the ILP configuration ({cost:.4g} {ctx.objectives[0].cost_model.unit})")
    run_search_epochs(ctx, engine.step, lambda: {"engine": engine.state_dict()}, "search", engine.recorder.start_epoch)
    return steady_config(ctx, engine)


def steady_config(ctx: MethodContext, engine: SearchEngine) -> CompressionConfig:
    """The last epoch's most frequent configuration, within the budget when there is one."""
    objective = ctx.objectives[0]
    batch = ctx.config.cost_batch

    def price(choice) -> float:
        return price_choice(ctx.space, choice, objective.cost_model, batch)

    choice = steady_choice(engine.recorder.counts, price, objective.target)
    if choice is None and engine.recorder.counts:  # none of them fits: lower the most frequent one
        start = steady_choice(engine.recorder.counts, price, None)
        assert start is not None
        # with no target the most frequent configuration is taken, so a target is set here
        target = float(cast(float, objective.target))
        unit = objective.cost_model.unit
        how = ctx.config.completion
        completed = complete_under_ceiling(ctx, start, target, how == "ilp") if how != "greedy" else None
        if completed is not None:
            ctx.progress.log(
                f"no configuration of the last search epoch fits the budget; the integer program under "
                f"the most frequent one ({price(start):.4g} {unit}) completed it to {completed[1]:.4g} {unit}"
            )
            return completed[0]
        choice, moves = fit_to_budget(ctx.space, start, price, target)
        ctx.progress.log(
            f"no configuration of the last search epoch fits the budget; lowered the most "
            f"frequent one by {moves} step(s) to {price(choice):.4g} {unit}"
        )
    if choice is None:  # no search step ran (zero search epochs): the gates as they stand
        cfg = ctx.config
        return derive_config(ctx.space, ctx.model_name, ctx.dataset, list(cfg.bits), cfg.group_size, batch)
    return choice_to_config(ctx.space, choice, ctx.make_config)
