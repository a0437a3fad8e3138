"""--flip-probe: bit gates that learn from measured loss differences, exact and in the right direction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cost_models import build_cost_model
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.pipeline import run_search
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.engine import CostObjective, SearchEngine
from hwsbs.sbs.flip_probe import FlipProbe
from hwsbs.task import task_loss
from tests.helpers import tiny_schedule


def _space():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    space = convert_model(model, torch.randn(32, 6), prune=False)
    space.model.train()
    space.model(torch.randn(32, 6))  # calibrate
    return space


def _loss_at(space, layer_name: str, w_bits: int, x, y) -> float:
    """The eval-mode loss of the model with one layer's weights fixed at ``w_bits`` (others as gated)."""
    layer = space.layer(layer_name)
    _, a_bits = layer.current_bits()
    saved = layer.mode
    layer.set_fixed(w_bits, a_bits)
    space.model.eval()
    with torch.no_grad():
        loss = float(task_loss(space.model(x), y))
    layer.mode = saved
    return loss


def test_measured_differences_are_the_losses_of_the_forced_widths():
    space = _space()
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    probe = FlipProbe(space, every=1, samples=48)
    probe.measure(x, y)
    assert space.model.training  # the mode is restored
    rel = probe.level_losses()["2|w"]
    base = _loss_at(space, "2", 8, x, y)  # the gates are all open after calibration
    assert rel[2] == 0.0
    assert rel[0] == pytest.approx(_loss_at(space, "2", 2, x, y) - base, abs=1e-6)
    assert rel[1] == pytest.approx(_loss_at(space, "2", 4, x, y) - base, abs=1e-6)
    assert set(probe.level_losses()) == {"2|w", "2|a"}  # the pinned first and last layers are not probed
    layer = space.layer("2")
    assert layer.current_bits() == (8, 8)  # thresholds restored


def test_the_term_is_zero_in_value_and_its_gradient_is_the_measured_difference():
    space = _space()
    probe = FlipProbe(space, every=1)
    probe.relative_loss = {"2|w": torch.tensor([0.30, 0.05, 0.0], dtype=torch.float64)}
    space.model(torch.randn(32, 6))
    gates = space.layer("2").last_w_gates
    gates.retain_grad()
    value = probe.term()
    assert float(value.detach()) == 0.0
    value.backward()
    # gate 0 (2 -> 4 bits), both open: closing it drops to 2 bits, L(8) - L(2) = -0.30; gate 1: L(8) - L(4)
    assert gates.grad.tolist() == pytest.approx([-0.30, -0.05])
    assert bool((space.layer("2").w_theta.grad > 0).all())  # SGD lowers the thresholds: the gates stay open


def test_a_damaging_width_resists_the_cost_and_a_harmless_one_follows_it():
    """Two equally priced layers: the one whose measured 4-bit loss is large keeps 8 bits."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    model.append(nn.ReLU())
    model.append(nn.Linear(16, 3))
    space = convert_model(model, torch.randn(32, 6), prune=False)
    engine = SearchEngine(space, [CostObjective(build_cost_model("bops"))], 1.0, 0.0, 0.05, 0.0, flip_probe=1)
    engine.flip_probe.every = 10**9  # keep the injected measurements below
    engine.flip_probe.measurements = 1
    engine.flip_probe.relative_loss = {
        "2|w": torch.tensor([5.0, 5.0, 0.0], dtype=torch.float64),  # 4 bits would cost 5 nats
        "4|w": torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64),  # free
    }
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(60):
        engine.step(x, y)
    assert space.layer("2").current_bits()[0] == 8
    assert space.layer("4").current_bits()[0] < 8


def test_bad_flip_probe_values_are_refused():
    with pytest.raises(ConfigError, match="--flip-probe"):
        SearchConfig(flip_probe=-1)
    with pytest.raises(ValueError, match="every=0"):
        FlipProbe(_space(), every=0)


def test_a_flip_probe_search_runs_resumes_and_is_recorded(tmp_path):
    cfg = SearchConfig(**tiny_schedule(), flip_probe=2, out=str(tmp_path / "run"))
    result = run_search(cfg)
    assert result.accuracy["compressed"] > 0.5
    assert (tmp_path / "run" / "options.json").read_text().count('"flip_probe": 2') == 1
