"""The integer-program baseline: the solver against brute force, sensitivities, the method end to end."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from cost_models import build_cost_model
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.methods import MethodContext, list_methods
from hwsbs.methods.ilp import (
    Choice,
    LayerChoices,
    Option,
    Problem,
    estimate_sensitivity,
    ilp_search,
    prune_levels,
    solve_assignment,
)
from hwsbs.methods.random_search import Candidate
from hwsbs.models import build_model
from hwsbs.pipeline import run_search
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.engine import CostObjective
from hwsbs.sbs.prunable import find_prunable_groups
from tests.helpers import digits_loaders, pretrained_small_cnn, tiny_schedule

BITS = ((4, 4), (8, 8))


# ---------------------------------------------------------------------------------------- toy problems
def _independent(rng: random.Random) -> Problem:
    """Three layers, two bit candidates each, no pruning."""
    layers = [LayerChoices(n, [Option(b, rng.uniform(1, 10), rng.uniform(0, 1)) for b in BITS]) for n in "abc"]
    return Problem(layers)


def _coupled(rng: random.Random) -> Problem:
    """a (producer, 3 levels) -> b (consumer of a, producer, 2 levels) -> c (consumer of b)."""

    def opts(own: int | None, src: int | None) -> list[Option]:
        return [
            Option(b, rng.uniform(1, 10), rng.uniform(0, 1), ko, ki)
            for b, ko, ki in itertools.product(BITS, range(own) if own else [None], range(src) if src else [None])
        ]

    layers = [
        LayerChoices("a", opts(3, None), own="a"),
        LayerChoices("b", opts(2, 3), own="b", source="a"),
        LayerChoices("c", opts(None, 2), source="b"),
    ]
    return Problem(layers, {"a": [0.0, rng.uniform(0, 1), rng.uniform(1, 2)], "b": [0.0, rng.uniform(0, 1)]})


def _brute_force(problem: Problem) -> float | None:
    """Lowest total sensitivity over every consistent assignment within the budget (None: none fits)."""
    best = None
    producers = list(problem.levels)
    for levels in itertools.product(*(range(len(problem.levels[p])) for p in producers)):
        lv = dict(zip(producers, levels))
        for picks in itertools.product(*(lay.options for lay in problem.layers)):
            if any(
                (lay.own and o.own_level != lv[lay.own]) or (lay.source and o.in_level != lv[lay.source])
                for lay, o in zip(problem.layers, picks)
            ):
                continue
            if sum(o.cost for o in picks) > problem.budget:
                continue
            sens = sum(o.sensitivity for o in picks) + sum(problem.levels[p][k] for p, k in lv.items())
            best = sens if best is None else min(best, sens)
    return best


def _check_choice(problem: Problem, choice: Choice) -> None:
    """The choice is consistent, within the budget, and its reported totals are right."""
    picks = {lay.name: lay.options[choice.options[lay.name]] for lay in problem.layers}
    for lay in problem.layers:
        if lay.own:
            assert picks[lay.name].own_level == choice.levels[lay.own]
        if lay.source:
            assert picks[lay.name].in_level == choice.levels[lay.source]
    assert choice.cost == pytest.approx(sum(o.cost for o in picks.values()))
    assert choice.cost <= problem.budget


@pytest.mark.parametrize("make", [_independent, _coupled])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solver_equals_brute_force(make, seed):
    rng = random.Random(seed)
    problem = make(rng)
    costs = [sum(o.cost for o in picks) for picks in itertools.product(*(lay.options for lay in problem.layers))]
    lo, hi = min(costs), max(costs)
    for share in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        problem.budget = lo + share * (hi - lo)
        expected = _brute_force(problem)
        if expected is None:
            with pytest.raises(ConfigError, match="no assignment fits"):
                solve_assignment(problem)
            continue
        choice = solve_assignment(problem)
        _check_choice(problem, choice)
        assert choice.sensitivity == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_solver_rejects_an_impossible_budget():
    problem = _coupled(random.Random(3))
    problem.budget = 0.5  # every option costs at least 1
    with pytest.raises(ConfigError, match="no assignment fits"):
        solve_assignment(problem)


def test_prune_levels():
    assert prune_levels(0) == [0]
    assert prune_levels(7) == list(range(8))
    levels = prune_levels(32)
    assert len(levels) == 8 and levels[0] == 0 and levels[-1] == 32 and levels == sorted(set(levels))


# ---------------------------------------------------------------------------------------- sensitivity
@pytest.fixture(scope="module")
def space():
    train, _ = digits_loaders()
    return convert_model(pretrained_small_cnn(), next(iter(train))[0])


def test_sensitivity_ordering_and_no_side_effects(space):
    train, _ = digits_loaders()
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    modes = [(layer.mode, layer.fixed_w_bits, layer.fixed_a_bits) for _, layer in space.layers()]
    sens = estimate_sensitivity(space, itertools.islice(train, 3), (2, 4, 8), torch.device("cpu"))
    for name, layer in space.layers():
        if layer.pinned:
            continue
        w, a = sens.weight[name], sens.act[name]
        assert w[2] >= w[4] >= w[8] >= 0.0, (name, w)
        assert a[2] >= a[4] >= a[8] >= 0.0, (name, a)
        assert w[2] > 0.0
    for g in space.groups:
        imp = sens.channels[g.producer]
        assert len(imp) == space.shapes[g.producer].out_channels and min(imp) >= 0.0 and max(imp) > 0.0
    after = space.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert modes == [(layer.mode, layer.fixed_w_bits, layer.fixed_a_bits) for _, layer in space.layers()]


def test_no_batches_is_an_error(space):
    with pytest.raises(ConfigError, match="no training batch"):
        estimate_sensitivity(space, [], (2, 4, 8), torch.device("cpu"))


def test_resume_returns_the_saved_choice_without_recomputing(space):
    def no_data(phase: str, epoch: int):
        raise AssertionError("resuming must not recompute sensitivities")

    searchable = [n for n, layer in space.layers() if not layer.pinned]
    saved = Candidate({n: (2, 8) for n in searchable}, {g.producer: [1, 3] for g in space.groups})
    ctx = MethodContext(
        SearchConfig(),
        space,
        [CostObjective(build_cost_model("bops"), 1.0, None)],
        no_data,
        None,
        torch.device("cpu"),
        PhaseProgress(False),
        lambda *a, **k: None,
        resume_state={"ilp": saved.to_state()},
    )
    config = ilp_search(ctx)
    by_name = config.by_name()
    assert all((by_name[n].w_bits, by_name[n].a_bits) == (2, 8) for n in searchable)
    g = space.groups[0]
    assert by_name[g.producer].pruned_channels == [4, 5, 6, 7, 12, 13, 14, 15]


# ---------------------------------------------------------------------------------------- end to end
def _coupling_holds(config) -> bool:
    by_name = config.by_name()
    groups, _ = find_prunable_groups(build_model("small_cnn", 10, 1, (8, 8)))
    pairs = [
        (g.producer, c)
        for g in groups
        if g.producer in by_name and by_name[g.producer].pruned_channels
        for c in [g.consumer, *g.passthrough]
    ]
    return all(by_name[c].state.kept_in == by_name[p].kept_out for p, c in pairs)


def test_registered():
    assert "ilp" in list_methods()


@pytest.mark.parametrize("fraction", [0.3, 0.1])
def test_ilp_meets_the_target_on_digits(tmp_path, fraction):
    options = tiny_schedule(method="ilp", target_fraction=fraction, cost="bops", finetune_epochs=0)
    result = run_search(SearchConfig(**options, out=str(tmp_path / "ilp")))
    assert result.method == "ilp"
    target = fraction * result.cost["uniform_8bit"]
    assert result.cost["compressed"] <= target
    assert result.config.cost(build_cost_model("bops")) <= target
    assert (result.layers[0]["w_bits"], result.layers[-1]["a_bits"]) == (8, 8)  # pinned
    assert _coupling_holds(result.config)
    assert any(h["phase"] == "search" and "sensitivity" in h for h in result.history)
    if fraction == 0.1:  # 4-bit everywhere costs ~0.26 of 8-bit: meeting 10% takes pruning
        assert any(d.pruned_channels for d in result.config.layers)


def test_unreachable_target_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cheapest configuration"):
        options = tiny_schedule(method="ilp", target=1.0, cost="bops", pretrain_epochs=0, finetune_epochs=0)
        run_search(SearchConfig(**options, out=str(tmp_path / "ilp")))
