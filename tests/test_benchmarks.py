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


def test_ort_deploy_prices_every_row_with_the_table_at_its_batch_and_summarises_over_seeds(tmp_path):
    import ort_deploy

    jobs = ort_deploy.plan([0.9, 0.8], tmp_path / "t.yaml", 32)
    assert [j.label for j in jobs] == ["uniform8", "sbs@u8x0.9", "sbs@u8x0.8"]
    assert all(j.options["hw"] == str(tmp_path / "t.yaml") and j.options["cost_batch"] == 32 for j in jobs)
    assert jobs[0].options["uniform_bits"] == 8 and [j.budget for j in jobs[1:]] == ["u8x0.9", "u8x0.8"]
    rows = [{"label": "a", "test_accuracy": x, "ort_test_accuracy": x, "skip": "s"} for x in (0.5, 0.7)]
    (entry,) = ort_deploy.summarise_rows(rows)
    assert entry["seeds"] == 2 and entry["test_accuracy"] == pytest.approx(0.6)
    assert entry["test_accuracy_std"] == pytest.approx(0.1414, abs=1e-4) and "skip" not in entry
