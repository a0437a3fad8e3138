"""The cost term differentiates any black-box cost model by gate-flip differences."""

from __future__ import annotations

import itertools

import pytest
import torch

from cost_models.base import CostModel, LayerShape, LayerState
from hwsbs.quant.gates import bits_from_gates
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.cost_term import CostTerm
from tests.helpers import digits_loaders, pretrained_small_cnn


class TableCost(CostModel):
    """A deliberately non-multiplicative table: nothing here looks like BOPs."""

    name = "test_table"
    metric = "latency"
    unit = "s"

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        speed = {2: 1.0, 4: 1.3, 8: 2.9, 32: 9.0}
        tile = -(-state.kept_out // 8) * 8  # channels rounded up to a tile of 8
        return batch * shape.macs(state.kept_in, tile) * 1e-9 * (speed[state.w_bits] + 0.5 * speed[state.a_bits]) + 1e-6


def test_nested_gates_select_one_width_for_every_gate_pattern():
    for gates in itertools.product([False, True], repeat=2):
        expected = 2 if not gates[0] else (4 if not gates[1] else 8)
        assert bits_from_gates((2, 4, 8), gates) == expected  # a closed gate hides the ones after it


@pytest.mark.parametrize("cost_model", [TableCost()], ids=["table"])
def test_gate_gradients_equal_flip_differences(cost_model):
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x)
    name = "conv2"
    layer = space.layer(name)
    with torch.no_grad():
        layer.w_theta.copy_(torch.tensor([0.0, 1e9]))  # weights at 4 bits: gate 2 open, gate 3 closed
        layer.a_theta.zero_()
    space.model(x)
    term = CostTerm(space, cost_model)
    states = term.current_states()
    assert states[name].w_bits == 4 and states[name].a_bits == 8
    total = term()
    # the value is exactly the model's discrete cost
    shapes = [space.shapes[n] for n in space.layer_names]
    assert float(total.detach()) == pytest.approx(
        cost_model.model_cost(shapes, [states[n] for n in space.layer_names]), rel=1e-9
    )
    (grad_w_gates,) = torch.autograd.grad(total, layer.last_w_gates, retain_graph=True)
    grad_g3 = grad_w_gates[1]
    st = states[name]
    shape = space.shapes[name]
    flip = cost_model.layer_cost(shape, LayerState(8, st.a_bits, st.kept_in, st.kept_out)) - cost_model.layer_cost(
        shape, st
    )
    assert float(grad_g3) == pytest.approx(flip, rel=1e-6)
    # channel gates: removing one group changes this layer's outputs and conv3's inputs
    g = layer.last_p_gates
    (grad_p,) = torch.autograd.grad(total, g)
    size = layer.group_size
    consumer = space.shapes["conv3"]
    s3 = states["conv3"]
    expected = (
        cost_model.layer_cost(shape, st)
        - cost_model.layer_cost(shape, LayerState(st.w_bits, st.a_bits, st.kept_in, st.kept_out - size))
        + cost_model.layer_cost(consumer, s3)
        - cost_model.layer_cost(consumer, LayerState(s3.w_bits, s3.a_bits, s3.kept_in - size, s3.kept_out))
    )
    assert torch.allclose(grad_p, torch.full_like(grad_p, expected), rtol=1e-6)


def test_cost_model_is_only_called_on_discrete_states_and_memoised():
    calls = []

    class Counting(TableCost):
        def layer_cost(self, shape, state, batch=1):
            assert all(isinstance(v, int) for v in (state.w_bits, state.a_bits, state.kept_in, state.kept_out))
            calls.append((shape.name, state))
            return super().layer_cost(shape, state, batch)

    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x)
    term = CostTerm(space, Counting())
    space.model(x)
    term()
    first = len(calls)
    space.model(x)
    term()
    assert len(calls) == first  # the same state costs nothing the second time
