"""--curvature: the gates' second-order (Fisher) flip differences, exact and in the right direction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwsbs.config import SearchConfig
from hwsbs.pipeline import run_search
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.curvature import CurvatureTerm
from tests.helpers import tiny_schedule


def _space():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return convert_model(model, torch.randn(32, 6), prune=False)


def test_the_term_is_zero_in_value_and_an_open_gate_resists_closing_by_its_fisher_curvature():
    space = _space()
    layer = space.layer("2")
    term = CurvatureTerm(space)
    space.model.train()
    space.model(torch.randn(32, 6))
    fisher = torch.rand_like(layer.weight)
    term.weight_fisher["2"] = fisher
    gates = layer.last_w_gates
    assert gates is not None and gates.tolist() == [1.0, 1.0]  # calibrated at the widest width
    gates.retain_grad()
    value = term()
    assert float(value.detach()) == 0.0
    value.backward()
    # closed form for the top gate (8 -> 4 bits): 0.5 * sum F (q8 - q4)^2, with the sign of "stay open"
    with torch.no_grad():
        layer.set_fixed(8, 32)
        q8 = layer.quantized_weight()
        layer.set_fixed(4, 32)
        q4 = layer.quantized_weight()
        layer.mode = "search"
    expected = -0.5 * float((fisher * (q8 - q4).pow(2)).sum())
    assert float(gates.grad[1]) == pytest.approx(expected, rel=1e-4)
    assert float(gates.grad[0]) < float(gates.grad[1]) < 0  # closing the lower gate drops to 2 bits: costs more
    assert bool((layer.w_theta.grad > 0).all())  # SGD lowers the thresholds: the gates stay open


def test_activation_fisher_is_collected_and_prices_activation_gates():
    space = _space()
    term = CurvatureTerm(space)
    space.model.train()
    x = torch.randn(32, 6)
    out = space.model(x)
    out.pow(2).mean().backward()
    term.observe(batch=32)
    assert set(term.weight_fisher) == {"2"}  # the pinned first and last layers are not searched
    assert ("2", "a") in term.act_fisher and float(term.act_fisher[("2", "a")]) > 0
    space.model(x)
    gates = space.layer("2").last_a_gates
    gates.retain_grad()
    term().backward()
    assert bool((gates.grad < 0).all())  # open activation gates resist closing too
    state = term.state_dict()
    again = CurvatureTerm(space)
    again.load_state_dict(state)
    assert again.act_fisher.keys() == term.act_fisher.keys()
    assert torch.equal(again.weight_fisher["2"], term.weight_fisher["2"])


def test_a_curvature_search_runs_and_is_recorded(tmp_path):
    cfg = SearchConfig(**tiny_schedule(), curvature=True, out=str(tmp_path / "run"))
    result = run_search(cfg)
    assert result.accuracy["compressed"] > 0.5
    assert (tmp_path / "run" / "options.json").read_text().count('"curvature": true') == 1
