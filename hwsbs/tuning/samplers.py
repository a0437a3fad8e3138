"""Seeded Optuna samplers: every trial's draws depend on (seed, trial number) alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hwsbs.errors import ConfigError

__all__ = ["SAMPLERS", "TrialSeededSampler", "make_sampler"]

SAMPLERS = ("tpe", "nsga2", "random")


def _trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number * 7_919 + 17) % (2**32)


class TrialSeededSampler(BaseSampler):
    """Delegates to a fresh inner sampler per trial, seeded from (seed, trial number).

    A trial's parameters then depend only on the seed, its number and the history it sees, so a
    single worker is reproducible and several workers never draw the same random start points.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int) -> None:
        self._factory = factory
        self._seed = seed
        self._inner = factory(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._factory(_trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(name: str, seed: int) -> BaseSampler:
    """``tpe``, ``nsga2`` (population 16) or ``random``, explicitly seeded per trial."""
    factories: dict[str, Callable[[int], BaseSampler]] = {
        "tpe": lambda s: optuna.samplers.TPESampler(seed=s, n_startup_trials=10, constant_liar=True),
        "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s, population_size=16),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s),
    }
    if name not in factories:
        raise ConfigError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")
    return TrialSeededSampler(factories[name], seed)
