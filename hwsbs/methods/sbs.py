"""Single-path Bit Sharing: joint search of bits and pruning with learnable gates (the default)."""

from __future__ import annotations

from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.derive import derive_config
from hwsbs.sbs.engine import SearchEngine

from .base import MethodContext, register_method

__all__ = ["sbs"]


@register_method("sbs", prunes=True, description="Single-path Bit Sharing: gates choose bits and pruned groups")
def sbs(ctx: MethodContext) -> CompressionConfig:
    """Train weights, clipping values and gate thresholds jointly, then read the gates."""
    cfg = ctx.config
    engine = SearchEngine(ctx.space, ctx.objectives, cfg.lam, cfg.search_lr, cfg.threshold_lr, cfg.weight_decay, cfg.cost_batch)
    if ctx.resume_state is not None:
        engine.load_state_dict(ctx.resume_state["engine"])
    steps = len(ctx.train_loader("search", 0))
    unit = ctx.objectives[0].cost_model.unit
    ctx.progress.start("search", cfg.search_epochs * steps, ctx.resume_epoch * steps)
    for epoch in range(ctx.resume_epoch, cfg.search_epochs):
        stats: dict[str, float] = {}
        for x, y in ctx.train_loader("search", epoch):
            stats = engine.step(x.to(ctx.device), y.to(ctx.device), f"search epoch {epoch + 1}")
            ctx.progress.update(loss=stats["loss"], acc=stats["acc"], cost=f"{stats['cost']:.3g} {unit}")
        ctx.save_state(epoch + 1, {"engine": engine.state_dict()}, stats)
    return derive_config(ctx.space, ctx.model_name, ctx.dataset, list(cfg.bits), cfg.group_size, cfg.cost_batch)
