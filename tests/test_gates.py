"""Threshold gates: hard forward, sigmoid-surrogate backward, and what lambda does to them."""

from __future__ import annotations

import torch

from cost_models import build_cost_model
from hwsbs.quant.gates import surrogate_grad, threshold_gate
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.engine import CostObjective, SearchEngine
from tests.helpers import digits_loaders, pretrained_small_cnn


def test_gate_forward_is_the_hard_indicator():
    a = torch.tensor([0.1, 0.5, 0.9])
    alpha = torch.tensor(0.5, requires_grad=True)
    assert threshold_gate(a, alpha, 1.0).tolist() == [0.0, 0.0, 1.0]


def test_surrogate_gradient_matches_formula():
    for tau in (0.1, 1.0, 3.0):
        a = torch.tensor(0.7)
        alpha = torch.tensor(0.2, requires_grad=True)
        threshold_gate(a, alpha, tau).backward()
        s = torch.sigmoid((a - 0.2) / tau)
        assert torch.allclose(alpha.grad, -(s * (1 - s)) / tau)
    # one threshold shared by a vector of gates (pruning): gradients add up
    stats = torch.tensor([0.1, 0.4, 1.2])
    alpha = torch.tensor(0.3, requires_grad=True)
    (threshold_gate(stats, alpha, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    expected = (torch.tensor([1.0, 2.0, 3.0]) * surrogate_grad(stats, torch.tensor(0.3), 0.5)).sum()
    assert torch.allclose(alpha.grad, expected)
    assert float(alpha.grad) < 0  # raising the threshold can only close gates


def _search(lam: float, steps: int = 40):
    torch.manual_seed(0)
    train, _ = digits_loaders()
    model = pretrained_small_cnn()
    x, _ = next(iter(train))
    space = convert_model(model, x)
    engine = SearchEngine(space, [CostObjective(build_cost_model("bops"))], lam, 0.01, 0.05, 5e-4)
    done = 0
    while done < steps:
        for xb, yb in train:
            engine.step(xb, yb)
            done += 1
            if done == steps:
                break
    return space


def test_raising_lambda_raises_thresholds_and_lowers_bits():
    weak, strong = _search(0.0), _search(1.0)

    def mean_theta(space):
        return torch.cat([torch.cat([m.w_theta, m.a_theta]) for _, m in space.layers() if not m.pinned]).mean()

    def mean_bits(space):
        return sum(sum(m.current_bits()) for _, m in space.layers()) / len(space.layer_names)

    assert mean_theta(strong) > mean_theta(weak) + 0.1
    assert mean_bits(strong) < mean_bits(weak)
    assert mean_bits(weak) >= 7.0  # without a cost the search stays (almost) at 8 bits


def test_with_lambda_zero_open_gates_are_exactly_those_above_threshold():
    space = _search(0.0, steps=10)
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space.model(x)
    for _, layer in space.layers():
        if layer.pinned:
            continue
        w_std, _ = layer._standardise(layer.weight)
        from hwsbs.quant.quantizer import bit_sharing_terms

        _, residuals = bit_sharing_terms(layer._normalise_weight(w_std), layer.bits)
        for gate, res, scale, theta in zip(layer.last_w_gates, residuals, layer.w_scale, layer.w_theta):
            above = float(res.detach().abs().mean() / scale) > float(theta.detach())
            assert bool(gate > 0.5) == above
            if above:
                assert float(gate.detach()) == 1.0


def test_thresholds_stay_non_negative_and_pruning_respects_its_cap():
    space = _search(3.0, steps=60)
    for _, layer in space.layers():
        assert float(layer.w_theta.detach().min()) >= 0 and float(layer.a_theta.detach().min()) >= 0
        assert float(layer.weight_clip.detach()) > 0 and float(layer.act_clip.detach()) > 0
        if layer.prunable:
            assert len(layer.pruned_groups()) <= int(layer.max_prune_fraction * layer.num_groups)


def test_host_side_flags_follow_every_write_to_their_buffers():
    """Layers read ``calibrated``/``act_signed`` from a host cache (no GPU sync per forward); a
    fill_, a load_state_dict or a new buffer must still change what the forward does."""
    from hwsbs.quant.layers import SBSConv2d

    layer = SBSConv2d.from_module(torch.nn.Conv2d(2, 4, 3), (2, 4, 8), 4, 0.5, 1.0)
    x = torch.rand(2, 2, 6, 6)  # non-negative: calibrates unsigned
    layer(x)
    assert layer._host_flag("calibrated") and not layer._host_flag("act_signed")
    z = torch.tensor([-0.5, 0.5])
    unsigned = layer._normalise_act(z, torch.tensor(1.0))
    layer.act_signed.fill_(True)
    assert layer._normalise_act(z, torch.tensor(1.0)).tolist() == [0.25, 0.75] != unsigned.tolist()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["act_signed"] = torch.tensor(False)
    state["calibrated"] = torch.tensor(False)
    layer.load_state_dict(state)
    assert not layer._host_flag("act_signed") and not layer._host_flag("calibrated")
    layer.register_buffer("act_signed", torch.tensor(True))
    assert layer._host_flag("act_signed")
