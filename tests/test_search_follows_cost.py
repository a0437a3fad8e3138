"""The search follows the cost: pruning the loss sees, graded outcomes, flat corners, budgets."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

import hwsbs
from cost_models.base import CostModel, LayerShape, LayerState
from hwsbs.quant.gates import bits_from_gates
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.cost_term import CostTerm, expected_flip_difference
from hwsbs.sbs.derive import apply_config, derive_config
from hwsbs.sbs.steady_state import ChoiceRecorder, fit_to_budget, price_choice, steady_choice
from tests.helpers import digits_loaders, pretrained_small_cnn, tiny_schedule


def _space_with_pruning(fraction_theta: float = 0.0):
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x)
    layer = space.layer("conv2")
    with torch.no_grad():  # prune the groups whose statistic is below the median
        layer.p_theta.fill_(float(layer.pruning_statistics().median()) + fraction_theta)
    return space, x


def test_a_pruned_channel_is_exactly_zero_where_the_consumer_reads_it():
    space, x = _space_with_pruning()
    producer, consumer = space.layer("conv2"), space.layer("conv3")
    pruned = producer.pruned_channels()
    assert 0 < len(pruned) < producer.weight.shape[0]
    seen = {}
    consumer.register_forward_hook(lambda m, inp, out: seen.setdefault("x", m.quantized_input(inp[0])))
    space.model.train()
    space.model(x)
    read = seen["x"]
    assert torch.count_nonzero(read[:, pruned]) == 0
    kept = [c for c in range(read.shape[1]) if c not in pruned]
    assert torch.count_nonzero(read[:, kept]) > 0


def test_search_model_and_physically_pruned_model_give_the_same_logits():
    space, x = _space_with_pruning()
    space.model.train()
    for _ in range(3):  # running statistics of batch-norm and activation residuals
        space.model(x)
    space.model.eval()
    with torch.no_grad():
        searched = space.model(x)
    config = derive_config(space)
    assert config.by_name()["conv2"].pruned_channels
    pruned_space = dataclasses.replace(space, model=copy.deepcopy(space.model))
    model = apply_config(pruned_space, config)
    assert model.get_submodule("conv2").weight.shape[0] == config.by_name()["conv2"].kept_out
    model.eval()
    with torch.no_grad():
        physical = model(x)
    # Equal up to float rounding: a conv with fewer output channels sums in another order (~1e-6),
    # and a value that sits on a rounding boundary of the next quantiser moves one step.
    diff = (searched - physical).abs()
    assert float(diff.median()) < 1e-5
    assert float(diff.max()) < 1e-2 * float(searched.abs().max())
    assert (searched.argmax(1) == physical.argmax(1)).all()


def test_pruning_gates_get_a_cross_entropy_gradient_of_the_cost_gradients_order():
    """Behind a training-mode batch-norm a gate on the producer's weights had ~1e-8 gradients."""
    space, x = _space_with_pruning()
    _, y = next(iter(digits_loaders()[0]))
    space.model.train()
    loss = torch.nn.functional.cross_entropy(space.model(x), y)
    g = space.layer("conv2").last_p_gates
    (grad,) = torch.autograd.grad(loss, g)
    assert float(grad.abs().median()) > 1e-5


class MaxPrecisionTable(CostModel):
    """A GPU-like table: a pair runs at its wider precision, so 8/8, 4/8 and 8/4 cost the same."""

    name = "test_max_precision"
    metric = "latency"
    unit = "s"
    speed = {2: 1.0, 4: 2.0, 8: 4.0, 32: 16.0}

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        return shape.macs(state.kept_in, state.kept_out) * self.speed[max(state.w_bits, state.a_bits)] * 1e-12


def _closed_form_w4to8(cost, p_w, p_a) -> float:
    """E[C(w gate 4->8 open) - C(closed)] with gate 2->4 ~ p_w[0] and the activation gates ~ p_a."""
    p_a_bits = {2: 1 - p_a[0], 4: p_a[0] * (1 - p_a[1]), 8: p_a[0] * p_a[1]}
    # with the 2->4 weight gate closed the layer is at 2 bits whatever the 4->8 gate says
    return p_w[0] * sum(p * (cost(8, a) - cost(4, a)) for a, p in p_a_bits.items())


def test_expected_flip_difference_equals_its_closed_form():
    table = {(w, a): max(w, a) * 1.0 + 0.1 * w for w, a in itertools.product((2, 4, 8), repeat=2)}

    def cost(w, a):
        return table[(w, a)]

    p_w, p_a = [0.7, 0.6], [0.8, 0.3]
    got = expected_flip_difference(cost, (2, 4, 8), "w", 1, p_w, p_a, 8, 8)
    assert got == pytest.approx(_closed_form_w4to8(cost, p_w, p_a), rel=1e-12)
    # probabilities at 0/1 reduce it to the hard flip difference
    assert expected_flip_difference(cost, (2, 4, 8), "w", 1, [1.0, 0.5], [1.0, 0.0], 8, 8) == pytest.approx(
        cost(8, 4) - cost(4, 4)
    )


def test_flat_corner_gets_the_expected_flip_difference_in_the_cost_term():
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x)
    cm = MaxPrecisionTable()
    space.model(x)  # thresholds at 0: every gate open, 8/8 everywhere
    term = CostTerm(space, cm)
    total = term()
    layer = space.layer("conv2")
    assert term.current_states()["conv2"].w_bits == 8
    (grad_w,) = torch.autograd.grad(total, layer.last_w_gates, retain_graph=True)
    st = term.current_states()["conv2"]
    shape = space.shapes["conv2"]

    def cost(w, a):
        return cm.layer_cost(shape, LayerState(w, a, st.kept_in, st.kept_out))

    assert cost(8, 8) == cost(4, 8)  # the hard flip would be zero
    expected = _closed_form_w4to8(cost, layer.last_w_probs.tolist(), layer.last_a_probs.tolist())
    assert expected > 0
    assert float(grad_w[1]) == pytest.approx(expected, rel=1e-6)


def test_steady_choice_is_the_most_frequent_within_budget_and_fit_to_budget_lands():
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x)
    from cost_models import build_cost_model

    bops = build_cost_model("bops")
    names = space.layer_names
    full = (tuple((n, 8, 8) for n in names), (("conv2", ()),))
    half = (tuple((n, 8, 8) if n in (names[0], names[-1]) else (n, 4, 4) for n in names), (("conv2", ()),))
    rec = ChoiceRecorder()
    rec.start_epoch(0)
    for c in [full] * 5 + [half] * 2:
        rec.record(c)
    again = ChoiceRecorder()
    again.load_state_dict(rec.state_dict())
    assert again.counts == rec.counts

    def price(c):
        return price_choice(space, c, bops, 1)

    assert steady_choice(rec.counts, price, None) == full
    assert steady_choice(rec.counts, price, price(half)) == half
    assert steady_choice(rec.counts, price, price(half) * 0.5) is None
    target = price(full) * 0.2
    landed, steps = fit_to_budget(space, full, price, target)
    assert price(landed) <= target and steps > 0
    unreachable, _ = fit_to_budget(space, full, price, 1.0)
    assert price(unreachable) > 1.0  # stops at the floor
    bits, pruned = unreachable
    assert all(w == 2 for n, w, a in bits if n not in (names[0], names[-1]))
    assert len(dict(pruned)["conv2"]) == space.max_pruned_groups("conv2")


def _kept_and_bops(lam: float):
    train, val = digits_loaders(subset=None)
    result = hwsbs.search(
        pretrained_small_cnn(),
        train,
        val,
        hw="a100",
        cost="bops",
        lam=lam,
        pretrain_epochs=0,
        search_epochs=6,
        finetune_epochs=0,
        progress=False,
        seed=0,
    )
    return sum(layer["kept_out_channels"] for layer in result.layers), result.cost["compressed"]


@pytest.mark.slow
def test_kept_channels_and_bops_fall_with_lambda(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [_kept_and_bops(lam) for lam in (0.01, 0.2, 1.0)]
    kept = [k for k, _ in runs]
    bops = [b for _, b in runs]
    assert kept[0] > kept[1] > kept[2], kept
    assert bops[0] > bops[1] >= bops[2], bops


def _budget_search(hw: str, target: str, search_epochs: int, subset: int | None = 512) -> hwsbs.SearchResult:
    """A budget-form search of the pretrained small CNN on ``hw`` (no pretraining, no fine-tuning)."""
    train, val = digits_loaders(subset=subset)
    options = tiny_schedule(hw=hw, target=target, pretrain_epochs=0, search_epochs=search_epochs, finetune_epochs=0)
    return hwsbs.search(pretrained_small_cnn(), train, val, **options, seed=0)


def test_budget_lands_on_a100(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _budget_search("a100", "30%", search_epochs=4, subset=None)
    share = result.cost["compressed"] / result.cost["uniform_8bit"]
    assert share <= 0.31, share
    assert result.budget is not None and result.budget["met"] and result.budget["reachable"]


def test_unreachable_budget_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _budget_search("h100", "5%", search_epochs=1)
    assert result.budget is not None
    assert not result.budget["met"] and not result.budget["reachable"]
    assert result.budget["floor"] > result.budget["target"]


def test_nested_gate_helper_is_shared():
    assert bits_from_gates((2, 4, 8), [True, False]) == 4


def test_fit_to_budget_never_walks_into_dearer_configurations():
    """On a device where fewer bits cost more (a measured CPU at batch 1), lowering stops at the cheapest."""
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x)

    class FewerBitsCostMore(CostModel):
        name, metric, unit = "test_inverted", "latency", "s"

        def layer_cost(self, shape, state, batch=1):
            return shape.macs(state.kept_in, state.kept_out) * (16 - min(state.w_bits, 8) - min(state.a_bits, 8))

    cm = FewerBitsCostMore()
    names = space.layer_names
    start = (tuple((n, 8, 8) for n in names), (("conv2", ()),))

    def price(c):
        return price_choice(space, c, cm, 1)

    landed, _ = fit_to_budget(space, start, price, price(start) * 0.01)
    assert price(landed) <= price(start)
    bits, _ = landed
    assert all((w, a) == (8, 8) for _, w, a in bits)  # every bit step down would cost more


def test_init_ilp_starts_the_gates_at_the_integer_programs_configuration(tmp_path):
    from hwsbs.config import SearchConfig
    from hwsbs.pipeline import run_search

    common = tiny_schedule(subset=256, search_epochs=0, finetune_epochs=0, cost="bops", target_fraction=0.3, seed=0)
    ilp = run_search(SearchConfig(**common, method="ilp", out=str(tmp_path / "ilp")))
    sbs = run_search(SearchConfig(**common, method="sbs", init="ilp", out=str(tmp_path / "sbs")))
    got = [(d["w_bits"], d["a_bits"], d["kept_out_channels"]) for d in sbs.layers]
    assert got == [(d["w_bits"], d["a_bits"], d["kept_out_channels"]) for d in ilp.layers]


def test_fit_to_budget_crosses_a_flat_corner_but_not_a_flat_plain():
    """a100-like: 8/8 -> 4/8 is free and 4/4 saves, so it lowers both; h100-like: every width
    costs the same, so it gives no bits away for nothing."""
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x, prune=False)
    names = space.layer_names
    start = (tuple((n, 8, 8) for n in names), ())

    class Flat(CostModel):
        name, metric, unit = "test_flat", "latency", "s"

        def layer_cost(self, shape, state, batch=1):
            return float(shape.macs(state.kept_in, state.kept_out))

    for cm, expect_lower in ((MaxPrecisionTable(), True), (Flat(), False)):

        def price(c, cm=cm):
            return price_choice(space, c, cm, 1)

        landed, _ = fit_to_budget(space, start, price, price(start) * 0.5)
        assert (price(landed) < price(start)) == expect_lower
        if not expect_lower:
            assert landed == start
