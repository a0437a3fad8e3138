"""SBS's loss-aware completion: the integer program at or below the search's steady state."""

from __future__ import annotations

import itertools

import pytest
import torch

from cost_models import build_cost_model
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.methods import MethodContext
from hwsbs.methods.completion import complete_under_ceiling
from hwsbs.methods.ilp import build_problem, estimate_sensitivity, solve_assignment
from hwsbs.progress import PhaseProgress
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.engine import CostObjective
from hwsbs.sbs.steady_state import price_choice
from tests.helpers import digits_loaders, pretrained_small_cnn

BOPS = build_cost_model("bops")


@pytest.fixture(scope="module")
def ctx() -> MethodContext:
    train, _ = digits_loaders()
    space = convert_model(pretrained_small_cnn(), next(iter(train))[0])
    return MethodContext(
        SearchConfig(),
        space,
        [CostObjective(BOPS, 1.0, None)],
        lambda phase, epoch: train,
        None,
        torch.device("cpu"),
        PhaseProgress(False),
        lambda *a, **k: None,
    )


def _start(ctx: MethodContext, widths: dict[str, tuple[int, int]], pruned: dict[str, tuple[int, ...]]):
    bits = tuple((n, *widths.get(n, (8, 8))) for n, layer in ctx.space.layers() if not layer.pinned)
    return bits, tuple((g.producer, pruned.get(g.producer, ())) for g in ctx.space.groups)


def test_completion_fits_the_budget_and_never_exceeds_the_ceiling(ctx):
    producer = ctx.space.groups[0].producer
    start = _start(ctx, {"conv2": (4, 8), "conv3": (8, 2)}, {producer: (0, 1)})
    full = price_choice(ctx.space, start, BOPS, 1)
    budget = 0.6 * full
    config, cost = complete_under_ceiling(ctx, start, budget)
    assert cost == pytest.approx(config.cost(BOPS)) and cost <= budget
    by_name = config.by_name()
    assert by_name["conv2"].w_bits <= 4 and by_name["conv3"].a_bits <= 2  # the ceiling holds
    assert len(by_name[producer].pruned_channels) >= 2 * ctx.config.group_size  # as much pruning at least
    for name, w, a in start[0]:
        assert by_name[name].w_bits <= w and by_name[name].a_bits <= a


def test_completion_is_the_least_sensitive_assignment_under_the_ceiling(ctx):
    """With the ceiling at the top of the space, completion equals the unrestricted program."""
    start = _start(ctx, {}, {})
    budget = 0.3 * price_choice(ctx.space, start, BOPS, 1)
    config, _ = complete_under_ceiling(ctx, start, budget)
    train = ctx.train_loader("search", 0)
    sens = estimate_sensitivity(ctx.space, itertools.islice(train, 4), ctx.config.bits, ctx.device)
    problem, plan = build_problem(ctx, sens, budget)
    free = solve_assignment(problem)
    cand = plan.candidate(problem, free, {n for n, layer in ctx.space.layers() if layer.pinned})
    by_name = config.by_name()
    assert {n: (by_name[n].w_bits, by_name[n].a_bits) for n in cand.bits} == cand.bits


def test_completion_gives_up_below_the_ceilings_floor_and_on_channel_widths(ctx):
    start = _start(ctx, {"conv2": (8, 8), "conv3": (8, 8)}, {})
    assert complete_under_ceiling(ctx, start, 1.0) is None  # nothing at or below costs 1 BOP
    bits, pruned = start
    channel = (tuple((n, (8, 4), a) if n == "conv2" else (n, w, a) for n, w, a in bits), pruned)
    assert complete_under_ceiling(ctx, channel, 1e12) is None


def test_completion_option_is_validated():
    with pytest.raises(ConfigError, match="--completion: expected one of ilp, ilp-widths, greedy, got 'best'"):
        SearchConfig(completion="best")


def test_ilp_widths_lets_the_program_undo_the_searchs_pruning(ctx):
    producer = ctx.space.groups[0].producer
    cap = ctx.space.max_pruned_groups(producer)
    start = _start(ctx, {}, {producer: tuple(range(cap))})
    roomy = 2.0 * price_choice(ctx.space, _start(ctx, {}, {}), BOPS, 1)  # everything fits
    kept, _ = complete_under_ceiling(ctx, start, roomy)
    free, _ = complete_under_ceiling(ctx, start, roomy, keep_pruning=False)
    assert len(kept.by_name()[producer].pruned_channels) == cap * ctx.config.group_size
    assert free.by_name()[producer].pruned_channels == []  # pruning costs accuracy and saves nothing needed
