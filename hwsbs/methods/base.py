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

__all__ = ["MethodContext", "SearchMethod", "register_method", "get_method", "list_methods"]


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
        return CompressionConfig(decisions, self.model_name, self.dataset, list(cfg.bits), cfg.group_size, cfg.cost_batch)


@dataclass
class SearchMethod:
    """A registered method."""

    name: str  # what --method takes
    run: Callable[[MethodContext], CompressionConfig]  # the search itself
    prunes: bool  # whether it decides pruning (else the model is converted without pruning gates)
    description: str  # one line for --help and docs


_METHODS: dict[str, SearchMethod] = {}


def register_method(name: str, *, prunes: bool, description: str) -> Callable[[Callable[[MethodContext], CompressionConfig]], Callable[[MethodContext], CompressionConfig]]:
    """Decorator registering ``fn(ctx) -> CompressionConfig`` as search method ``name``."""

    def decorator(fn: Callable[[MethodContext], CompressionConfig]) -> Callable[[MethodContext], CompressionConfig]:
        if name in _METHODS and _METHODS[name].run is not fn:
            warnings.warn(f"search method {name!r} is registered again; the new one replaces the old", stacklevel=2)
        _METHODS[name] = SearchMethod(name, fn, prunes, description)
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
