"""benchmarks/channel_compare.py and uniform_pairs.py: their rows, budgets and configurations (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import channel_compare  # noqa: E402
import uniform_pairs  # noqa: E402

from cost_models import cost_model_for  # noqa: E402
from hwsbs.models import build_model  # noqa: E402
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision  # noqa: E402
from hwsbs.sbs.convert import searchable_shapes  # noqa: E402


def test_plan_searches_both_granularities_at_every_device_budget_with_one_group_size():
    jobs = channel_compare.plan(["bismo@u4", "a100@u4"], group_size=8)
    assert [(j.label, j.method, j.budget) for j in jobs] == [
        ("uniform4", "uniform", None),
        ("uniform2", "uniform", None),
        ("sbs-layer@bismo@u4", "sbs", "bismo@u4"),
        ("sbs-channel@bismo@u4", "sbs", "bismo@u4"),
        ("sbs-layer@a100@u4", "sbs", "a100@u4"),
        ("sbs-channel@a100@u4", "sbs", "a100@u4"),
    ]
    layer, channel = jobs[2].options, jobs[3].options
    assert layer == {"hw": "bismo", "cost": None, "granularity": "layer", "group_size": 8}
    assert channel == {**layer, "granularity": "channel"}  # only the bit granularity differs
    with pytest.raises(ValueError, match="expected DEVICE@uBITS"):
        channel_compare.plan(["bismo"])


def test_budget_is_the_uniform_cost_on_that_device_and_mixed_layers_are_counted():
    fp = build_model("resnet20", 10, 3, (32, 32))
    example = torch.randn(2, 3, 32, 32)
    order, shapes = searchable_shapes(fp, example)
    u4 = uniform_pairs.pair_config(fp, example, 4, 4)
    assert [(d.w_bits, d.a_bits) for d in u4.layers[:2]] == [(8, 8), (4, 4)] and u4.layers[-1].w_bits == 8
    for device in ("bismo", "a100"):
        expected = u4.cost(cost_model_for(device))
        assert channel_compare.uniform_cost(fp, example, device, 4) == pytest.approx(expected)
    assert channel_compare.uniform_cost(fp, example, "bismo", 2) < channel_compare.uniform_cost(fp, example, "bismo", 4)
    name = order[1]
    groups = shapes[name].out_channels // 8
    mixed = LayerDecision(shapes[name], 8, 8, group_w_bits=(2,) + (8,) * (groups - 1), bit_group_size=8)
    same = LayerDecision(shapes[name], 8, 8, group_w_bits=(8,) * groups, bit_group_size=8)
    assert channel_compare.mixed_layers(CompressionConfig([mixed, same])) == 1
