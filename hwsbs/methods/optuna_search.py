"""The Optuna baseline: black-box TPE over per-layer bits and per-producer pruning under the budget.

``--method optuna`` samples, per searchable layer, weight and activation bits from the candidate
set and, per prunable producer, how many channel groups to prune (0 up to the
``--max-prune-fraction`` cap; the groups with the smallest mean |w| go, the statistic SBS's
pruning gates read). A trial is scored like a random-search candidate (validation accuracy of the
quantised, pruned model after batch-norm re-estimation, no training); a trial over the budget is
reported to TPE as a violated constraint and not evaluated, since it can never be chosen.

With ``--granularity channel`` a channel-wise layer (see
:func:`~hwsbs.methods.random_search.channel_wise_layers`) has one weight categorical per
output-channel group, ``<layer>:w:g<i>``, in place of ``<layer>:w``; activations
(``<layer>:a``) and pruning (``<layer>:pruned_groups``) are as at layer granularity. A pruned
group keeps its parameter (its width is not priced), so every trial has the same parameters and
TPE models each of them from every trial.

The sampler is ``TPESampler(seed=--seed)`` on in-memory storage; the budget is a trial
constraint, ``cost / budget - 1 <= 0``, set with ``Trial.set_constraint`` (Optuna 5 deprecates
the sampler's ``constraints_func`` for it; constrained TPE reads it the same way). The first
trial is the widest uniform configuration that fits the budget, so TPE starts from a feasible
point. ``N`` counts evaluated (feasible) trials: ``extra["trials"]``, else compute-matched to
``--search-epochs`` (see :func:`~hwsbs.methods.random_search.default_trials`). Budget and the
other options (``bn_batches``, ``eval_batches``, ``budget_bits``) as for ``--method random``.
"""

from __future__ import annotations

from typing import Any

import optuna
import torch

from hwsbs.sbs.config_io import CompressionConfig

from .base import MethodContext
from .random_search import (
    Candidate,
    CandidateSearch,
    candidate_config,
    candidate_search_method,
    channel_wise_layers,
    cheapest_candidate,
    max_pruned_groups,
)

__all__ = ["group_magnitudes", "optuna_search"]

_CONSTRAINT = "budget"  # trial constraint: relative overshoot of the budget (<= 0 is feasible)


@torch.no_grad()
def group_magnitudes(layer) -> list[float]:
    """Mean |w - mean(w)| per output-channel group: the ranking of SBS's pruning-gate statistic."""
    w = layer.weight.detach()
    per_channel = (w - w.mean()).abs().flatten(1).mean(1)
    sizes = layer.group_sizes()
    out, start = [], 0
    for size in sizes:
        out.append(float(per_channel[start : start + size].mean()))
        start += size
    return out


class _Space:
    """Trial parameters <-> candidates."""

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx = ctx
        self.bits = list(ctx.config.bits)
        self.searchable = [n for n, layer in ctx.space.layers() if not layer.pinned]
        self.per_group = channel_wise_layers(ctx)  # layer -> weight groups (empty: layer granularity)
        self.producers = {}
        for g in ctx.space.groups:
            layer = ctx.space.layer(g.producer)
            mags = group_magnitudes(layer)
            order = sorted(range(layer.num_groups), key=lambda i, m=mags: (m[i], i))  # type: ignore[misc]  # mypy cannot infer lambdas with default-bound arguments
            self.producers[g.producer] = (max_pruned_groups(layer), order)

    def weight_params(self, name: str) -> list[str]:
        """The weight-bit parameters of layer ``name``: one, or one per output-channel group."""
        if name not in self.per_group:
            return [f"{name}:w"]
        return [f"{name}:w:g{g}" for g in range(self.per_group[name])]

    def suggest(self, trial: optuna.trial.Trial) -> Candidate:
        bits: dict[str, tuple[Any, int]] = {}
        for n in self.searchable:  # weights, then activations: the layer-wise order of earlier versions
            ws = tuple(int(trial.suggest_categorical(p, self.bits)) for p in self.weight_params(n))
            bits[n] = (ws if n in self.per_group else ws[0], int(trial.suggest_categorical(f"{n}:a", self.bits)))
        pruned = {}
        for name, (cap, order) in self.producers.items():
            k = trial.suggest_int(f"{name}:pruned_groups", 0, cap) if cap > 0 else 0
            pruned[name] = sorted(order[:k])
        return Candidate(bits, pruned)

    def uniform_params(self, bits: int) -> dict[str, int]:
        params = {p: bits for n in self.searchable for p in (*self.weight_params(n), f"{n}:a")}
        params.update({f"{name}:pruned_groups": 0 for name, (cap, _) in self.producers.items() if cap > 0})
        return params


@candidate_search_method(
    "optuna", "trials", "Optuna TPE over per-layer bits and pruned groups under the budget (no training per trial)"
)
def optuna_search(ctx: MethodContext, search: CandidateSearch) -> CompressionConfig:
    """Run the study and return its most accurate feasible trial (ties: the cheaper one)."""
    cfg = ctx.config
    cm = ctx.objectives[0].cost_model
    space = _Space(ctx)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
        for b in sorted(cfg.bits, reverse=True):  # a feasible first trial: widest uniform that fits
            if candidate_config(ctx, Candidate({s: (b, b) for s in space.searchable})).cost(cm) <= search.budget:
                study.enqueue_trial(space.uniform_params(b))
                break
        _run_trials(study, space, search)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return search.finish(trials=len(study.trials), evaluated=search.evaluator.evaluated)


def _run_trials(study: optuna.Study, space: _Space, search: CandidateSearch) -> None:
    """Ask/tell until ``search.count`` feasible trials were scored (or a cap on infeasible ones is hit)."""
    ctx, budget, n = search.ctx, search.budget, search.count
    cm = ctx.objectives[0].cost_model
    max_attempts = 50 * n + 200  # TPE learns feasibility quickly; the cap only guards odd budgets
    ctx.progress.start("search", n, 0)
    attempts = 0
    while search.evaluator.evaluated < n and attempts < max_attempts:
        attempts += 1
        trial = study.ask()
        cand = space.suggest(trial)
        config = candidate_config(ctx, cand)
        cost = config.cost(cm)
        trial.set_constraint(_CONSTRAINT, cost / budget - 1.0)
        trial.set_user_attr("cost", cost)
        if cost > budget:
            study.tell(trial, 0.0)  # infeasible: the constraint already rules it out
            continue
        study.tell(trial, search.score(cand, config, cost))
    if search.best is None:  # no feasible point in max_attempts draws: fall back to the cheapest one
        cand = cheapest_candidate(ctx)
        config = candidate_config(ctx, cand)
        search.score(cand, config, config.cost(cm))
