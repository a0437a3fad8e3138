"""The integer-program baseline (``--method ilp``): HAWQ-V3 / ModelOpt-AutoQuantize style.

Each layer's choices are scored once, on a few training batches, by a second-order Taylor
estimate of the cross-entropy increase, with the diagonal empirical Fisher standing in for the
Hessian (the gradient vanishes at a trained optimum, so the quadratic term is what is left)::

    S_w(l, b) = 0.5 * sum_i F_i (Q_b(w)_i - w_i)^2,   F = N * (dCE/dw)^2, averaged over batches
    S_a(l, b) = 0.5 * N * sum_{n, i} (dCE/dx_{n,i})^2 (Q_b(x)_{n,i} - x_{n,i})^2, averaged likewise

with every layer at full precision (``set_fixed(32, 32)``, pinned layers included), ``N`` the batch
size, ``CE`` the batch-mean loss, ``x`` a layer's input and ``Q_b`` the layer's own quantiser
(``set_fixed(b, 32)``/``quantized_weight()``, ``set_fixed(32, b)``/``quantized_input(x)``).
Pruning a producer's output channel removes that channel of its consumer's input, i.e. sets
``x_c = 0`` there, so a channel's importance is ``0.5 * N * sum_{n, pixels} (g_x * x)^2`` over it
(at the consumer's input); a group's is the sum over its channels, and pruning ``k`` groups removes
the ``k`` least important ones, at sensitivity ``S_p(k)`` = the sum of theirs. Prune levels are
``k = 0..max_pruned_groups`` (at most 8 of them, evenly spaced, 0 and the cap included).
Everything is computed on a deep copy; the search space's model is never touched.

The program (:func:`solve_assignment`, ``scipy.optimize.milp``/HiGHS): one binary per joint option
of each layer (its bit pair, its own prune level if it is a producer, its input level if its input
channels follow a producer, as consumer or depthwise passthrough) and one per producer level.
Each layer picks exactly one option and each producer one level; a layer's own/input level must
equal its producer's level variable. Minimise the total sensitivity (a layer's ``S_w + S_a``, each
producer's ``S_p`` once) subject to ``sum cost <= budget``, the costs being the cost model's own
``cached_layer_cost`` for that exact state, so any cost model works. The budget is that of
``--method random``: the ``--target``, else the cost of uniform 4 bits.

Options (``SearchConfig.extra``): ``sensitivity_batches`` (4), ``ilp_time_limit`` (seconds, 60),
``budget_bits`` (4).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from cost_models.base import FLOAT_BITS, LayerState
from hwsbs.errors import ConfigError
from hwsbs.sbs.config_io import CompressionConfig
from hwsbs.sbs.convert import SearchSpace

from .base import MethodContext, register_method
from .random_search import Candidate, candidate_config, check_budget_reachable, max_pruned_groups, resolve_budget
from .sensitivity import Sensitivity, estimate_sensitivity

__all__ = [
    "Option",
    "LayerChoices",
    "Problem",
    "Choice",
    "Sensitivity",
    "estimate_sensitivity",
    "prune_levels",
    "build_problem",
    "solve_assignment",
    "ilp_search",
    "ilp_candidate",
    "assign",
    "sensitivities",
    "PrunePlan",
    "Admit",
]

_MAX_LEVELS = 8  # prune levels per producer in the program
_FP = FLOAT_BITS


# ---------------------------------------------------------------------------------------- program
@dataclass(frozen=True)
class Option:
    """One joint choice of a layer."""

    bits: tuple[int, int]  # (w_bits, a_bits)
    cost: float  # the layer's cost in this state
    sensitivity: float  # S_w + S_a of the bit pair
    own_level: int | None = None  # index into ``Problem.levels[layer.own]``
    in_level: int | None = None  # index into ``Problem.levels[layer.source]``


@dataclass
class LayerChoices:
    """A layer's options and the producers its levels are tied to."""

    name: str
    options: list[Option]
    own: str | None = None  # producer whose level ``own_level`` picks (the layer itself)
    source: str | None = None  # producer whose level ``in_level`` follows


@dataclass
class Problem:
    """Layers with joint options, producers with per-level prune sensitivities, one budget."""

    layers: list[LayerChoices]
    levels: dict[str, list[float]] = field(default_factory=dict)  # producer -> S_p per level index
    budget: float = float("inf")


@dataclass
class Choice:
    """A solution: an option index per layer, a level index per producer."""

    options: dict[str, int]
    levels: dict[str, int]
    cost: float
    sensitivity: float


def _constraint_rows(problem: Problem, n_x: int, y_index: dict[tuple[str, int], int]) -> tuple[coo_matrix, list]:
    """One-hot rows (= 1) and level-consistency rows (= 0): a sparse matrix and its right-hand sides."""
    lb: list[float]
    rows, cols, vals, lb = [], [], [], []

    def add_row(entries: list[tuple[int, float]], rhs: float) -> None:
        r = len(lb)
        for col, v in entries:
            rows.append(r)
            cols.append(col)
            vals.append(v)
        lb.append(rhs)

    start = 0
    for layer in problem.layers:
        idx = range(start, start + len(layer.options))
        add_row([(i, 1.0) for i in idx], 1.0)
        for prod, attr in ((layer.own, "own_level"), (layer.source, "in_level")):
            if prod is None:
                continue
            for k in range(len(problem.levels[prod])):
                picks = [(i, 1.0) for i, o in zip(idx, layer.options) if getattr(o, attr) == k]
                add_row([*picks, (y_index[prod, k], -1.0)], 0.0)
        start += len(layer.options)
    for prod, sens in problem.levels.items():
        add_row([(y_index[prod, k], 1.0) for k in range(len(sens))], 1.0)
    return coo_matrix((vals, (rows, cols)), shape=(len(lb), n_x + len(y_index))), lb


def _decode(problem: Problem, x: np.ndarray, y_index: dict[tuple[str, int], int]) -> Choice:
    options, start = {}, 0
    for layer in problem.layers:
        options[layer.name] = int(np.argmax(x[start : start + len(layer.options)]))
        start += len(layer.options)
    levels = {p: int(np.argmax([x[y_index[p, k]] for k in range(len(s))])) for p, s in problem.levels.items()}
    chosen = [lay.options[options[lay.name]] for lay in problem.layers]
    sens = sum(o.sensitivity for o in chosen) + sum(problem.levels[p][k] for p, k in levels.items())
    return Choice(options, levels, float(sum(o.cost for o in chosen)), float(sens))


def solve_assignment(problem: Problem, time_limit: float | None = None) -> Choice:
    """The minimum-sensitivity consistent assignment whose total cost fits ``problem.budget``.

    Raises:
        ConfigError: no assignment fits, or the solver failed.
    """
    n_x = sum(len(lay.options) for lay in problem.layers)
    keys = [(p, k) for p, s in problem.levels.items() for k in range(len(s))]
    y_cols = {key: n_x + i for i, key in enumerate(keys)}
    c = np.asarray(
        [o.sensitivity for lay in problem.layers for o in lay.options] + [problem.levels[p][k] for p, k in keys],
        dtype=float,
    )
    c /= max(float(np.abs(c).max(initial=0.0)), 1e-300)  # O(1) coefficients for the solver's tolerances
    budget = float(problem.budget)
    costs = np.asarray([o.cost for lay in problem.layers for o in lay.options] + [0.0] * len(keys))
    scale = budget if budget > 0 and np.isfinite(budget) else 1.0
    a_eq, rhs_eq = _constraint_rows(problem, n_x, y_cols)
    options = {"mip_rel_gap": 1e-9, "time_limit": time_limit} if time_limit else {"mip_rel_gap": 1e-9}
    rhs = budget / scale
    for attempt in range(4):  # the solver's feasibility tolerance may let a choice overshoot slightly
        cons = [LinearConstraint(a_eq, rhs_eq, rhs_eq), LinearConstraint(costs[None, :] / scale, -np.inf, rhs)]
        res = milp(c, integrality=np.ones(len(c)), bounds=Bounds(0, 1), constraints=cons, options=options)
        if res.x is None:
            raise ConfigError(f"ilp: no assignment fits the budget {budget:.4g} ({' '.join(res.message.split())})")
        choice = _decode(problem, res.x, y_cols)
        if choice.cost <= budget:
            return choice
        rhs -= (choice.cost - budget) / scale + 1e-7 * 10**attempt
    raise ConfigError(f"ilp: the solver's choices keep exceeding the budget {budget:.4g} (last {choice.cost:.4g})")


def prune_levels(max_k: int, limit: int = _MAX_LEVELS) -> list[int]:
    """Numbers of pruned groups to offer: all of ``0..max_k``, or ``limit`` evenly spaced ones."""
    if max_k + 1 <= limit:
        return list(range(max_k + 1))
    return sorted({round(i * max_k / (limit - 1)) for i in range(limit)})


@dataclass
class PrunePlan:
    """How level indices map to pruned groups and kept channels."""

    ks: dict[str, list[int]]  # producer -> pruned-group counts per level index
    order: dict[str, list[int]]  # producer -> groups, least important first
    kept: dict[str, list[int]]  # producer -> kept output channels per level index

    def candidate(self, problem: Problem, choice: Choice, pinned: set[str]) -> Candidate:
        bits = {
            lay.name: lay.options[choice.options[lay.name]].bits for lay in problem.layers if lay.name not in pinned
        }
        pruned = {p: sorted(self.order[p][: self.ks[p][k]]) for p, k in choice.levels.items()}
        return Candidate(bits, pruned)


#: ``admit(layer, option, plan)``: whether the program may pick ``option`` for ``layer``.
Admit = Callable[[LayerChoices, Option, PrunePlan], bool]


def _plan(space: SearchSpace, sens: Sensitivity) -> tuple[PrunePlan, dict[str, list[float]]]:
    plan, levels = PrunePlan({}, {}, {}), {}
    for g in space.groups:
        layer = space.layer(g.producer)
        sizes = layer.group_sizes()
        imp = sens.groups(g.producer, sizes)
        order = sorted(range(len(sizes)), key=lambda i: (imp[i], i))
        ks = prune_levels(max_pruned_groups(layer))
        plan.ks[g.producer], plan.order[g.producer] = ks, order
        plan.kept[g.producer] = [space.shapes[g.producer].out_channels - sum(sizes[i] for i in order[:k]) for k in ks]
        levels[g.producer] = [float(sum(imp[i] for i in order[:k])) for k in ks]
    return plan, levels


def build_problem(ctx: MethodContext, sens: Sensitivity, budget: float) -> tuple[Problem, PrunePlan]:
    """Every layer's joint options, costed by the primary objective's cost model."""
    space, cm, batch = ctx.space, ctx.objectives[0].cost_model, ctx.config.cost_batch
    plan, levels = _plan(space, sens)
    source = space.kept_in_source()
    passthrough = {p for g in space.groups for p in g.passthrough}
    layers = []
    for name, layer in space.layers():
        shape = space.shapes[name]
        own = name if name in plan.ks else None
        src = source.get(name)
        pairs = (
            [(layer.fixed_w_bits, layer.fixed_a_bits)]
            if layer.pinned
            else list(itertools.product(ctx.config.bits, repeat=2))
        )
        options = []
        for (w, a), ko, ki in itertools.product(
            pairs, range(len(plan.ks[own])) if own else [None], range(len(plan.ks[src])) if src else [None]
        ):
            # ko / ki are None exactly when there is no own / source producer
            kept_in = plan.kept[src][cast(int, ki)] if src else shape.in_channels
            kept_out = (
                plan.kept[own][cast(int, ko)] if own else (kept_in if name in passthrough else shape.out_channels)
            )
            cost = cm.cached_layer_cost(shape, LayerState(w, a, kept_in, kept_out), batch)
            s = 0.0 if layer.pinned else sens.weight[name][w] + sens.act[name][a]
            options.append(Option((w, a), float(cost), s, ko, ki))
        layers.append(LayerChoices(name, options, own, src))
    return Problem(layers, levels, budget), plan


@register_method(
    "ilp",
    prunes=True,
    meets_target=True,
    description="integer program over per-layer bits and pruning: Fisher-Taylor sensitivity, cost under the budget (HAWQ-V3 style)",
)
def ilp_search(ctx: MethodContext) -> CompressionConfig:
    """Score every choice once, solve the integer program, return its configuration."""
    if ctx.resume_state is not None and "ilp" in ctx.resume_state:
        return candidate_config(ctx, Candidate.from_state(ctx.resume_state["ilp"]))
    cand, cost, sensitivity = ilp_candidate(ctx)
    ctx.save_state(ctx.config.search_epochs, {"ilp": cand.to_state()}, {"cost": cost, "sensitivity": sensitivity})
    return candidate_config(ctx, cand)


def ilp_candidate(ctx: MethodContext) -> tuple[Candidate, float, float]:
    """The integer program's choice under the budget: ``(candidate, its cost, its sensitivity)``."""
    budget = resolve_budget(ctx)
    check_budget_reachable(ctx, budget)
    ctx.progress.start("search", sensitivity_batches(ctx) + 1, 0)
    return assign(ctx, sensitivities(ctx), budget)


def sensitivity_batches(ctx: MethodContext) -> int:
    """``sensitivity_batches`` (default 4): training batches the sensitivities are averaged over."""
    n = ctx.extra.get("sensitivity_batches", 4)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"sensitivity_batches: expected a positive integer, got {n!r}")
    return n


def sensitivities(ctx: MethodContext) -> Sensitivity:
    """Fisher-Taylor sensitivities of the search space's model as it stands, on a few training batches."""
    return estimate_sensitivity(
        ctx.space,
        itertools.islice(ctx.train_loader("search", 0), sensitivity_batches(ctx)),
        ctx.config.bits,
        ctx.device,
        on_batch=lambda: ctx.progress.update(what="sensitivity"),
    )


def assign(
    ctx: MethodContext, sens: Sensitivity, budget: float, admit: Admit | None = None
) -> tuple[Candidate, float, float]:
    """Solve the program under ``budget`` over the options ``admit`` accepts (all by default).

    Returns:
        ``(candidate, its cost, its sensitivity)``; the cost is the whole configuration's, so a
        cost model with cross-layer terms is re-solved with the budget lowered by the overshoot.

    Raises:
        ConfigError: no admitted assignment fits the budget.
    """
    cm = ctx.objectives[0].cost_model
    problem, plan = build_problem(ctx, sens, budget)
    if admit is not None:
        for layer in problem.layers:
            layer.options = [o for o in layer.options if admit(layer, o, plan)]
            if not layer.options:
                raise ConfigError(f"ilp: no admitted option for layer {layer.name}")
    pinned = {name for name, layer in ctx.space.layers() if layer.pinned}
    limit = float(ctx.extra.get("ilp_time_limit", 60.0))
    for _ in range(3):  # a cost model with cross-layer terms may price the whole model differently
        choice = solve_assignment(problem, limit)
        cand = plan.candidate(problem, choice, pinned)
        cost = candidate_config(ctx, cand).cost(cm)
        if cost <= budget:
            break
        problem.budget -= cost - budget
    else:
        raise ConfigError(f"ilp: the chosen configuration costs {cost:.4g} {cm.unit}, over the budget {budget:.4g}")
    ctx.progress.update(cost=f"{cost:.3g} {cm.unit}", sensitivity=choice.sensitivity)
    return cand, cost, choice.sensitivity
