"""Channel-wise weight bits (issue 17): per-group gates, pricing per device, config, export."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import yaml

from cost_models import cost_model_for
from cost_models.analytic import BopsCostModel, SizeCostModel
from cost_models.base import LayerShape, LayerState
from cost_models.roofline import RooflineCostModel
from hardware_profiles.loader import load_profile
from hardware_profiles.schema import ChannelSplit
from hwsbs.cli.main import main
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError, ModelError
from hwsbs.export import ModelSpec, export_model, load_exported
from hwsbs.export.mixed import MixedExportedLayer
from hwsbs.export.verify import verify_export
from hwsbs.quant.channel_bits import current_group_bits, enable_channel_bits, group_gated_quantize, group_residuals
from hwsbs.quant.fused import _grid
from hwsbs.quant.fused_layers import use_fused
from hwsbs.quant.quantizer import bit_sharing_terms, compose
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config, save_config
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.cost_term import CostTerm
from hwsbs.sbs.derive import apply_config, derive_config
from hwsbs.sbs.steady_state import ChoiceRecorder, _downgrades
from tests.helpers import digits_loaders, pretrained_small_cnn, tiny_argv

BITS = (2, 4, 8)
CONV = LayerShape("c", "conv", 64, 64, (3, 3), in_size=(16, 16), out_size=(16, 16))
# 16 channels at 2 bits, 48 at 8: widest 8
MIXED = LayerState(8, 8, 64, 64, w_bits_groups=((2, 16), (8, 48)))


# ----------------------------------------------------------------- the quantiser
def test_group_decomposition_equals_direct_per_group_quantisation():
    torch.manual_seed(0)
    z = torch.rand(10, 3, 3, 3)  # 10 rows in groups of 4: the last group has 2
    gates = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], requires_grad=True)  # 2, 4 and 8 bits
    out = group_gated_quantize(z, gates, BITS, 4)
    for g, (lo, hi, bits) in enumerate([(0, 4, 2), (4, 8, 4), (8, 10, 8)]):
        assert torch.equal(out[lo:hi], _grid(z[lo:hi], bits)), f"group {g}"
    # the gate gradients are those of the paper's nested decomposition, group by group
    grad = torch.randn_like(z)
    (ours,) = torch.autograd.grad((out * grad).sum(), gates)
    for g, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 10)]):
        leaf = gates.detach()[g].clone().requires_grad_(True)
        terms, _ = bit_sharing_terms(z[lo:hi], BITS)
        ref = compose(terms, [leaf[0], leaf[1]])
        (expected,) = torch.autograd.grad((ref * grad[lo:hi]).sum(), leaf)
        torch.testing.assert_close(ours[g], expected, rtol=1e-4, atol=1e-4)


def _space():
    train, _ = digits_loaders()
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x)
    return space, x


def test_group_gates_follow_their_own_statistic():
    space, x = _space()
    layer = space.layer("conv3")
    with torch.no_grad():  # group 0 low variance, group 1 high variance (the rest as trained)
        layer.weight[0:4].mul_(0.05)
        layer.weight[4:8].mul_(3.0)
    enable_channel_bits(layer)
    assert layer.w_theta.shape == (16, 2)
    rel = layer.weight_statistics()
    # standardised over the groups: the weakest at 1 (every gate open), the others spread out
    torch.testing.assert_close(rel.min(0).values, torch.ones(2))
    raw = group_residuals(layer._normalise_weight(layer._search_standardised()[0]), layer.bits, 4)
    assert float(raw[0, 0]) != pytest.approx(float(raw[1, 0]), rel=0.05)  # their statistics differ
    assert abs(float(rel[0, 0] - rel[1, 0])) > layer.tau  # by more than a temperature in gate units
    with torch.no_grad():  # move group 1 only: its statistic changes far more than the others'
        layer.weight[4:8].mul_(0.2)
    moved = layer.weight_statistics()
    change = (moved - rel).abs()[:, 0]
    assert float(change[1]) > 3 * float(torch.cat([change[:1], change[2:]]).max())
    with torch.no_grad():  # one threshold value between the two groups' statistics: different widths
        mid = (moved[0, 0] + moved[1, 0]) / 2
        layer.w_theta.fill_(0.0)
        layer.w_theta[0:2, 0] = mid
    widths = current_group_bits(layer)
    assert (widths[0] == 8) != (widths[1] == 8)
    # gradients reach each group's own threshold only through its own gate
    layer.train()
    space.model(x)
    layer.last_w_gates.sum().backward()
    assert layer.w_theta.grad.shape == (16, 2) and bool((layer.w_theta.grad != 0).any())


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_reference_paths_agree_exactly(fused):
    space, x = _space()
    layer = space.layer("conv2")
    enable_channel_bits(layer)
    with torch.no_grad():
        layer.w_theta[::3, 1] = 1e3  # some groups at 4 bits
    old = use_fused(fused)
    try:
        out = space.model(x)
        out.sum().backward()
        grads = layer.w_theta.grad.clone()
    finally:
        use_fused(old)
    old = use_fused(not fused)
    try:
        layer.w_theta.grad = None
        other = space.model(x)
        other.sum().backward()
    finally:
        use_fused(old)
    assert torch.equal(out, other) and torch.equal(grads, layer.w_theta.grad)


# ----------------------------------------------------------------- pricing
def test_bops_size_and_bit_serial_sum_the_groups():
    parts = MIXED.bit_splits(CONV)
    assert [(s.w_bits, s.kept_out) for s in parts] == [(2, 16), (8, 48)]
    for model in (BopsCostModel(), SizeCostModel()):
        assert model.layer_cost(CONV, MIXED) == sum(model.layer_cost(CONV, s) for s in parts)
        assert model.layer_cost(CONV, MIXED) < model.layer_cost(CONV, MIXED.widest)
    bismo = cost_model_for(load_profile("bismo"))  # d_m = 8: 16 channels are whole tiles
    assert bismo.layer_cycles(CONV, MIXED) == sum(bismo.layer_cycles(CONV, s) for s in parts)
    assert bismo.layer_cost(CONV, MIXED) < bismo.layer_cost(CONV, MIXED.widest)


def test_roofline_prices_the_widest_group_unless_the_profile_splits():
    a100 = load_profile("a100")
    plain = RooflineCostModel(a100)
    assert plain.layer_cost(CONV, MIXED) == plain.layer_cost(CONV, MIXED.widest)
    overhead = 2.0e-6
    split = RooflineCostModel(
        a100.model_copy(update={"channel_split": ChannelSplit(supported=True, per_split_overhead_s=overhead)})
    )
    per_layer = split.params.per_layer_overhead_s
    sub_gemms = sum(max(split.compute_and_memory_s(CONV, s)) for s in MIXED.bit_splits(CONV))
    assert split.layer_cost(CONV, MIXED) == pytest.approx(sub_gemms + overhead + per_layer, rel=1e-12)
    assert split.layer_cost(CONV, MIXED) != plain.layer_cost(CONV, MIXED)
    # a one-width layer is priced as before, split or not
    one = LayerState(8, 8, 64, 64)
    assert split.layer_cost(CONV, one) == plain.layer_cost(CONV, one)


def test_energy_runs_the_widest_group_without_split():
    profile = load_profile("bitfusion")
    if profile.energy is None:
        pytest.skip("no energy block")
    energy = cost_model_for(profile, "energy")
    assert energy.layer_cost(CONV, MIXED) == energy.layer_cost(CONV, MIXED.widest)


# ----------------------------------------------------------------- the cost term
def test_group_gate_gradient_is_the_exact_flip_difference():
    space, x = _space()
    layer = space.layer("conv2")
    enable_channel_bits(layer)
    with torch.no_grad():
        layer.w_theta[0, 1] = 1e3  # group 0 at 4 bits, the rest at 8
    space.model(x)
    bops = BopsCostModel()
    term = CostTerm(space, bops)
    total = term()
    bits, _ = term.last_choice
    assert dict((n, w) for n, w, _ in bits)["conv2"][:2] == (4, 8)
    (grad,) = torch.autograd.grad(total, layer.last_w_gates)
    shape = space.shapes["conv2"]
    st = term.current_states()["conv2"]
    four = LayerState(8, st.a_bits, st.kept_in, st.kept_out, w_bits_groups=((4, 4), (8, 60)))
    eight = LayerState(8, st.a_bits, st.kept_in, st.kept_out)
    assert st == four
    assert float(grad[0, 1]) == pytest.approx(bops.layer_cost(shape, eight) - bops.layer_cost(shape, four))
    configs = [derive_config(space)]
    assert float(total.detach()) == pytest.approx(configs[0].cost(bops))


# ----------------------------------------------------------------- config and fixed model
def _mixed_config() -> CompressionConfig:
    space, _ = _space()
    decisions = space.decisions({"conv2": ((4, 8, 2) * 5 + (8,), 4)}, {"conv2": [1]})
    return CompressionConfig(decisions, model="small_cnn", dataset="digits", bits=list(BITS))


def test_config_round_trip_and_format(tmp_path):
    config = _mixed_config()
    d = config.by_name()["conv2"]
    assert d.w_bits == 8 and len(d.group_w_bits) == 16 and d.state.w_bits_groups == ((2, 20), (4, 20), (8, 20))
    path = tmp_path / "config.yaml"
    save_config(config, path)
    text = path.read_text()
    assert "hwsbs-config/2" in text
    loaded = load_config(path)
    assert loaded.by_name()["conv2"].state == d.state
    bismo = cost_model_for(load_profile("bismo"))
    assert loaded.cost(bismo) == config.cost(bismo)
    old = tmp_path / "old.yaml"  # a list in a version-1 file, a list of the wrong length, a newer format
    old.write_text(text.replace("hwsbs-config/2", "hwsbs-config/1"))
    with pytest.raises(ConfigError, match="needs format 'hwsbs-config/2'"):
        load_config(old)
    data = yaml.safe_load(text)
    data["layers"][1]["w_bits"] = data["layers"][1]["w_bits"][:-1]
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="expected one width per group of 4 output channels"):
        load_config(short)
    newer = tmp_path / "newer.yaml"
    newer.write_text(text.replace("hwsbs-config/2", "hwsbs-config/3"))
    with pytest.raises(ConfigError, match="newer hwsbs"):
        load_config(newer)
    plain = tmp_path / "plain.yaml"  # a layer-wise config stays version 1
    save_config(CompressionConfig([LayerDecision(d.shape, 4, 4)]), plain)
    assert "hwsbs-config/1" in plain.read_text()


def test_granularity_is_validated():
    with pytest.raises(ConfigError, match="--granularity: expected one of layer, channel"):
        SearchConfig(granularity="row")
    with pytest.raises(ConfigError, match="not implemented with --method ilp"):
        SearchConfig(granularity="channel", method="ilp")


def test_fixed_model_and_its_export_compute_the_mixed_layer(tmp_path):
    config = _mixed_config()
    spec = ModelSpec("small_cnn", 10, 1, (8, 8))
    space = convert_model(pretrained_small_cnn(), spec.example(64), BITS)
    model = apply_config(space, config).eval()
    conv2 = model.get_submodule("conv2")
    assert len(conv2.fixed_row_bits) == 60 and set(conv2.fixed_row_bits) == {2, 4, 8}  # group 1 pruned
    # each kept row on its own group's grid (group 1 is gone): 4, 2, 4, 8, ... bits
    assert conv2.fixed_row_bits[:16] == (4,) * 4 + (2,) * 4 + (4,) * 4 + (8,) * 4
    w = conv2.quantized_weight().detach()
    levels = [len(torch.unique(w[r])) for r in (0, 4, 12)]
    assert levels[1] <= 4 < levels[0] <= 16 < levels[2]
    exported = export_model(model, spec.example(), spec=spec, fold_norms=False)  # the layer alone
    mixed = exported.net.get_submodule("conv2")
    assert isinstance(mixed, MixedExportedLayer) and [p.record.w_bits for p in mixed.parts] == [2, 4, 8]
    x = spec.example(32, seed=1)
    inputs = {}
    hook = conv2.register_forward_hook(lambda m, a, o: inputs.update(x=a[0], y=o))
    with torch.no_grad():
        model(x)
    hook.remove()
    with torch.no_grad():
        out = mixed(inputs["x"].contiguous(memory_format=torch.channels_last))
    assert float((out - inputs["y"]).abs().max() / inputs["y"].abs().max()) < 1e-5
    _, val = digits_loaders(256)  # the whole model, batch-norms folded (the default), and saved
    folded = export_model(model, spec.example(), spec=spec)
    assert verify_export(model, folded, val)["passed"]
    loaded = load_exported(folded.save(tmp_path / "m.pt"))
    with torch.no_grad():
        assert torch.equal(loaded(x), folded(x))
    onnx_export = pytest.importorskip("hwsbs.export.onnx_export")
    pytest.importorskip("onnx")
    with pytest.raises(ModelError, match="conv2 has channel-wise weight bits"):
        onnx_export.onnx_from_export(folded, spec.example())


# ----------------------------------------------------------------- the acceptance run
def test_cli_rejects_a_bad_granularity(capsys):
    assert main(["search", "--hw", "bismo", "--granularity", "row", "--no-progress"]) == 2
    assert "--granularity: expected one of layer, channel" in capsys.readouterr().err


@pytest.mark.slow
def test_bismo_channel_search_ends_mixed_and_hwsbs_cost_reproduces_it(tmp_path, capsys):
    """Weight-only on bismo (activations float): only weight bits save, so with a budget the
    groups of a layer cross their thresholds one after another and the search stops between."""
    out = tmp_path / "run"
    argv = tiny_argv(
        "search",
        *("--granularity", "channel", "--group-size", "8", "--weight-only", "--target", "60%"),
        hw="bismo",
        subset=1024,
        epochs=(3, 3, 1),
    )
    assert main([*argv, "--out", str(out), "--seed", "0"]) == 0
    result = json.loads((out / "result.json").read_text())
    mixed = [layer for layer in result["layers"] if isinstance(layer["w_bits"], list)]
    assert mixed and all(len(set(layer["w_bits"])) > 1 for layer in mixed)
    assert "format: hwsbs-config/2" in (out / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["cost", "--config", str(out / "config.yaml"), "--hw", "bismo", "--json"]) == 0
    priced = json.loads(capsys.readouterr().out)["results"][0]["cost"]
    assert priced == pytest.approx(result["cost"]["compressed"], rel=1e-9)


def test_pruning_gate_of_a_mixed_producer_removes_its_own_width(tmp_path):
    space, x = _space()
    layer = space.layer("conv2")  # a producer: its groups are read by conv3
    enable_channel_bits(layer)
    with torch.no_grad():
        layer.w_theta[0, :] = 1e3  # group 0 at 2 bits, the rest at 8
    space.model(x)
    bops = BopsCostModel()
    term = CostTerm(space, bops)
    total = term()
    (grad,) = torch.autograd.grad(total, layer.last_p_gates)
    st, consumer = term.current_states()["conv2"], term.current_states()["conv3"]
    shape, shape3 = space.shapes["conv2"], space.shapes["conv3"]
    without = {
        0: LayerState(8, st.a_bits, st.kept_in, 60),
        1: LayerState(8, st.a_bits, st.kept_in, 60, w_bits_groups=((2, 4), (8, 56))),
    }
    fewer_in = replace(consumer, kept_in=consumer.kept_in - 4)
    for g in (0, 1):  # removing group 0 removes 2-bit channels, group 1 8-bit ones
        expected = bops.layer_cost(shape, st) - bops.layer_cost(shape, without[g])
        expected += bops.layer_cost(shape3, consumer) - bops.layer_cost(shape3, fewer_in)
        assert float(grad[g]) == pytest.approx(expected)
    assert float(grad[0]) < float(grad[1])
    # the recorded choice survives a checkpoint (weights_only) and steps down group by group
    recorder = ChoiceRecorder()
    recorder.record(term.last_choice)
    torch.save(recorder.state_dict(), tmp_path / "r.pt")
    again = ChoiceRecorder()
    again.load_state_dict(torch.load(tmp_path / "r.pt", weights_only=True))
    assert again.counts == recorder.counts
    lowered = [dict((n, w) for n, w, _ in c[0])["conv2"] for c in _downgrades(space, term.last_choice)]
    assert (2, 4, 8, 8) in [w[:4] for w in lowered if isinstance(w, tuple)]


def test_fit_to_budget_lowers_a_channel_wise_layer_as_one_where_no_single_group_saves():
    """a100 runs a mixed layer at its widest group: one group's step down saves nothing, so the
    descent must be able to move every widest group together, or it stops over a reachable budget."""
    from hwsbs.sbs.steady_state import BUDGET_SLACK, fit_to_budget, price_choice

    space, _ = _space()
    wise = ("conv2", "conv3")
    for name in wise:
        enable_channel_bits(space.layer(name))
    groups = {n: int(space.layer(n).w_theta.shape[0]) for n in wise}
    start = (tuple((n, (8,) * groups[n], 8) if n in wise else (n, 8, 8) for n in space.layer_names), ())
    a100 = cost_model_for("a100")

    def price(choice):
        return price_choice(space, choice, a100, 1)

    four = (tuple((n, (4,) * groups[n], 4) if n in wise else (n, 8, 8) for n in space.layer_names), ())
    singles = [c for c in _downgrades(space, start) if c[1] == () and price(c) < price(start)]
    assert singles == []  # no single-group or activation step saves at the 8/8 corner
    landed, _ = fit_to_budget(space, start, price, price(four))
    assert price(landed) <= price(four) * (1 + BUDGET_SLACK)
    widths = {n: w for n, w, _ in landed[0]}
    assert all(max(widths[n]) < 8 for n in wise)
