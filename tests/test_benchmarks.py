"""The benchmark scripts' building blocks still run and measure what they say (no timing asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cost_eval  # noqa: E402
import frontier  # noqa: E402
import search_overhead  # noqa: E402

from hwsbs.models import build_model  # noqa: E402
from hwsbs.sbs.convert import convert_model  # noqa: E402


@pytest.mark.parametrize("config", search_overhead.CONFIGS)
def test_every_overhead_configuration_is_a_real_training_step(config):
    x, y = search_overhead._batch(4)
    step = search_overhead.make_step("resnet20", config, x, y)
    step()  # the first step calibrates; compare parameters across the second
    before = {n: p.detach().clone() for n, p in step.model.named_parameters() if n.endswith("weight")}
    step()
    changed = [n for n, p in step.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed, f"{config}: a step must update the weights"


def test_frontier_plan_puts_every_method_at_the_same_budgets():
    jobs = frontier.plan(["uniform", "sbs", "ilp", "random"], [0.75])
    labels = [j.label for j in jobs]
    assert labels == [
        "uniform8",
        "uniform4",
        "uniform2",
        "sbs@u4",
        "sbs@u2",
        "sbs@u2x0.75",
        "sbs@u2x0.75-mpf0.75",
        "ilp@u4",
        "ilp@u2",
        "ilp@u2x0.75",
        "random@u4",
    ]
    assert all(j.budget is None for j in jobs if j.method == "uniform")
    assert next(j for j in jobs if j.label == "sbs@u2x0.75-mpf0.75").options == {"max_prune_fraction": 0.75}


def test_frontier_budgets_are_uniform_costs_and_the_split_is_disjoint(tmp_path):
    model = build_model("resnet20", 10, 3, (32, 32))
    costs = frontier.budget_costs(model, torch.randn(2, 3, 32, 32))
    assert costs["u2"] < costs["u4"] and costs["u2x0.75"] == pytest.approx(0.75 * costs["u2"])
    root = tmp_path / "cifar"
    for split, n in (("train", 5), ("test", 3)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i}.jpg").write_bytes(b"x")
    search, ev = frontier.prepare_splits(root, tmp_path / "out", 3, 2, 0)
    train = {p.name for p in (search / "train" / "a").iterdir()}
    val = {p.name for p in (search / "val" / "a").iterdir()}
    assert len(train) == 3 and len(val) == 2 and not train & val  # validation held out from training
    assert len(list((ev / "test" / "a").iterdir())) == 3  # the whole test split


def test_cost_eval_times_the_term_of_every_cost_model_on_a_covering_table():
    model = build_model("resnet20", 10, 3, (32, 32))
    space = convert_model(model, torch.randn(4, 3, 32, 32), (2, 4, 8))
    space.model.train()
    space.model(torch.randn(4, 3, 32, 32))
    for label, factory in cost_eval.COST_MODELS.items():
        timing = cost_eval.time_cost_term(space, factory, cold_repeats=1, repeats=1)
        assert timing["cold_s"] > 0 and timing["warm_s"] > 0 and timing["cost"] > 0, label
