"""Search methods behind ``hwsbs search --method``: SBS and the baselines share one pipeline.

A method gets the converted model (every Conv2d/Linear an SBS layer, calibrated, pruning pairs
found) and a :class:`MethodContext` with the data, the cost objectives and checkpoint hooks, and
returns the :class:`CompressionConfig` it chose. The pipeline fine-tunes and evaluates it, so
every method is measured the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.convert import SearchSpace
from hwsbs.sbs.engine import CostObjective

__all__ = ["MethodContext", "SearchMethod", "register_method", "get_method", "list_methods", "run_search_epochs"]


@dataclass
class MethodContext:
    """Everything a search method may use."""

    config: SearchConfig  # all options of the run
    space: SearchSpace  # the converted, calibrated model
    objectives: list[CostObjective]  # costs to pay (the first is the reported one)
    train_loader: Callable[[str, int], DataLoader]  # (phase, epoch) -> seeded loader for that epoch
    val_loader: DataLoader  # held-out data for every accuracy
    device: torch.device  # where the model lives
    progress: PhaseProgress  # progress bars
    save_state: Callable[..., None]  # (epochs done, method state, metrics=None) -> checkpoint
    resume_state: dict[str, Any] | None = None  # what save_state stored, when resuming
    resume_epoch: int = 0  # epochs already done, when resuming
    model_name: str = ""  # for the config's metadata
    dataset: str = ""  # for the config's metadata
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific options

    def make_config(self, decisions: list) -> CompressionConfig:
        """A :class:`CompressionConfig` with this run's metadata."""
        cfg = self.config
        return CompressionConfig(
            decisions, self.model_name, self.dataset, list(cfg.bits), cfg.group_size, cfg.cost_batch
        )


@dataclass
class SearchMethod:
    """A registered method."""

    name: str  # what --method takes
    run: Callable[[MethodContext], CompressionConfig]  # the search itself
    prunes: bool  # whether it decides pruning (else the model is converted without pruning gates)
    description: str  # one line for --help and docs
    meets_target: bool = False  # ends within a reachable --target (checked by hwsbs.testing)


_METHODS: dict[str, SearchMethod] = {}


def register_method(
    name: str, *, prunes: bool, description: str, meets_target: bool = False
) -> Callable[[Callable[[MethodContext], CompressionConfig]], Callable[[MethodContext], CompressionConfig]]:
    """Decorator registering ``fn(ctx) -> CompressionConfig`` as search method ``name``.

    Args:
        name: what ``--method`` takes.
        prunes: the method decides pruning (else the model is converted without pruning gates).
        description: one line for ``--help`` and docs.
        meets_target: the method guarantees a reachable ``--target``
            (:func:`hwsbs.testing.check_search_method` holds it to that).
    """

    def decorator(fn: Callable[[MethodContext], CompressionConfig]) -> Callable[[MethodContext], CompressionConfig]:
        if name in _METHODS and _METHODS[name].run is not fn:
            warnings.warn(f"search method {name!r} is registered again; the new one replaces the old", stacklevel=2)
        _METHODS[name] = SearchMethod(name, fn, prunes, description, meets_target)
        return fn

    return decorator


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_METHODS)


def get_method(name: str) -> SearchMethod:
    """The method registered as ``name``.

    Raises:
        ConfigError: ``unknown method 'x'; known: ...``.
    """
    if name not in _METHODS:
        raise ConfigError(f"--method: unknown method {name!r}; known: {', '.join(list_methods())}")
    return _METHODS[name]


def run_search_epochs(
    ctx: MethodContext,
    step: Callable[[torch.Tensor, torch.Tensor, str], dict[str, float]],
    state: Callable[[], dict[str, Any]],
    what: str,
    on_epoch_start: Callable[[int], None] | None = None,
) -> None:
    """The epoch loop every gradient-based method shares: seeded loaders, progress, checkpoints.

    Args:
        ctx: the method's context (resumes from ``ctx.resume_epoch``).
        step: ``(x, y, where) -> metrics`` with at least ``loss``, ``acc`` and ``cost``.
        state: the method's checkpointable state, saved after every epoch.
        what: how errors and progress name the phase (``"search"``).
        on_epoch_start: called with the epoch index before its first step.
    """
    cfg = ctx.config
    steps = len(ctx.train_loader("search", 0))
    unit = ctx.objectives[0].cost_model.unit
    ctx.progress.start("search", cfg.search_epochs * steps, ctx.resume_epoch * steps)
    for epoch in range(ctx.resume_epoch, cfg.search_epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        stats: dict[str, float] = {}
        for x, y in ctx.train_loader("search", epoch):
            stats = step(x.to(ctx.device), y.to(ctx.device), f"{what} epoch {epoch + 1}")
            ctx.progress.update(loss=stats["loss"], acc=stats["acc"], cost=f"{stats['cost']:.3g} {unit}")
        ctx.save_state(epoch + 1, state(), stats)
