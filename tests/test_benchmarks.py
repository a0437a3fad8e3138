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


def test_frontier_plan_gives_every_method_the_same_epochs():
    specs = frontier.plan(["sbs", "uniform", "random", "optuna", "multipath"], [0.1, 1.0], [0.2], ["u4", "10%"], 2, 3)
    labels = [s.label for s in specs]
    assert labels == ["sbs-lam0.1", "sbs-lam1", "uniform2", "uniform4", "uniform8", "random-u4", "random-10pct",
                      "optuna-u4", "optuna-10pct", "multipath-lam0.2"]
    uniform = [s for s in specs if s.method == "uniform"]
    assert all(s.options["search_epochs"] == 0 and s.options["finetune_epochs"] == 5 for s in uniform)
    assert next(s for s in specs if s.label == "random-10pct").options == {"target_fraction": 0.1}
    with pytest.raises(SystemExit, match="unknown method family"):
        frontier.plan(["annealing"], [], [], [], 1, 1)


def test_cost_eval_times_the_term_of_every_cost_model_on_a_covering_table():
    model = build_model("resnet20", 10, 3, (32, 32))
    space = convert_model(model, torch.randn(4, 3, 32, 32), (2, 4, 8))
    space.model.train()
    space.model(torch.randn(4, 3, 32, 32))
    for label, factory in cost_eval.COST_MODELS.items():
        timing = cost_eval.time_cost_term(space, factory, cold_repeats=1, repeats=1)
        assert timing["cold_s"] > 0 and timing["warm_s"] > 0 and timing["cost"] > 0, label
