"""Weight-only search (--weight-only, --weight-group): float activations, grouped weight scales."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cost_models import build_cost_model, cost_model_for
from cost_models.base import SCALE_BITS, LayerShape, LayerState
from hwsbs.cli.main import main
from hwsbs.quant.matmul import SBSMatmul
from hwsbs.sbs.config_io import load_config
from hwsbs.sbs.convert import convert_model
from tests.test_transformers import SdpaBlock, _tokens


def _weight_only_space(group: int = 4):
    torch.manual_seed(0)
    return convert_model(SdpaBlock(), _tokens(), weight_only_act_bits=16, weight_group=group)


def test_every_activation_stays_float_and_products_are_pinned_float():
    space = _weight_only_space()
    x = torch.randn(5, 7)
    for name, layer in space.layers():
        assert layer.act_float and layer.fixed_a_bits == 16, name
        if isinstance(layer, SBSMatmul):
            assert layer.pinned and (layer.fixed_w_bits, layer.fixed_a_bits) == (16, 16)
            b = torch.randn(3, 4)
            assert torch.equal(layer.quantized_operand(b), b)
        else:
            layer.mode = "search"
            assert torch.equal(layer._quantize_input(x), x)
    decisions = space.decisions({n: (2, 2) for n in space.layer_names}, {})
    assert all(d.a_bits == 16 and d.act_float for d in decisions)
    assert {d.shape.name: d.w_bits for d in decisions}["qkv"] == 2  # weights follow the request
    assert all(d.w_group == (0 if d.shape.kind == "matmul" else 4) for d in decisions)


def test_grouped_weights_use_one_scale_per_row_and_group():
    space = _weight_only_space(group=8)
    layer = space.layer("proj")
    layer.set_fixed(8, 16)
    w = layer.quantized_weight().detach()
    w_std, std = layer._standardise(layer.weight)
    groups = (w_std.detach().abs().reshape(w.shape[0], -1, 8).amax(-1) * std).reshape(-1)
    # the largest |w| of every group is a grid end point, so it is reproduced exactly
    got = (w.abs().reshape(w.shape[0], -1, 8).amax(-1)).reshape(-1)
    torch.testing.assert_close(got, groups, rtol=1e-5, atol=1e-6)
    centred = (w_std * std).detach()  # the quantiser works on standardised weights and restores only the scale
    err = (w - centred).abs().reshape(w.shape[0], -1, 8)
    assert bool((err <= groups.view(w.shape[0], -1, 1) / 255 + 1e-6).all())  # half a step of each group's grid


def test_size_and_roofline_count_group_scales():
    shape = LayerShape("fc", "linear", 256, 512, out_size=(1, 1))
    plain, grouped = LayerState(4, 16, 256, 512, act_float=True), LayerState(4, 16, 256, 512, 128, True)
    assert grouped.scale_count(shape) == 512 * 2
    size = build_cost_model("size")
    assert size.layer_cost(shape, grouped) == 256 * 512 * 4 + 512 * 2 * SCALE_BITS
    assert size.layer_cost(shape, plain) == 256 * 512 * 4
    roof = cost_model_for("a100")
    scale_s = 512 * 2 * SCALE_BITS / 8 / (roof.memory.bandwidth_bytes_per_s * roof.memory_efficiency)
    assert roof.layer_cost(shape, grouped) - roof.layer_cost(shape, plain) == pytest.approx(scale_s, rel=1e-9)
    # a decode step is memory bound: 4-bit weights cost less than 8-bit ones at 16-bit activations
    assert roof.layer_cost(shape, grouped) < roof.layer_cost(shape, LayerState(8, 16, 256, 512, 128, True))


def test_weight_only_cli_run_keeps_activations_float_and_its_config_prices_the_same(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["search", "--hw", "a100", "--weight-only", "--weight-group", "8", "--subset", "256"]
    argv += ["--pretrain-epochs", "1", "--search-epochs", "1", "--finetune-epochs", "1", "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert all(layer["a_bits"] == 16 for layer in result["layers"])
    config = load_config(out / "config.yaml")
    assert all(d.act_float and d.a_bits == 16 for d in config.layers)
    assert [d.w_group for d in config.layers if d.shape.kind != "matmul"] == [8] * len(config.layers)
    roof = cost_model_for("a100")
    assert config.cost(roof) == pytest.approx(result["cost"]["compressed"], rel=1e-12)
    # "uniform 8-bit" of a weight-only run keeps its activations float too
    assert all(d.a_bits == 16 and d.w_bits == 8 for d in config.uniform(8).layers)
    assert config.uniform(8).cost(roof) == pytest.approx(result["cost"]["uniform_8bit"], rel=1e-12)
    capsys.readouterr()
    assert main(["cost", "--config", str(out / "config.yaml"), "--hw", "a100", "--json"]) == 0
    assert math.isclose(json.loads(capsys.readouterr().out)["results"][0]["cost"], result["cost"]["compressed"])


def test_bad_weight_group_is_one_line(capsys):
    assert main(["search", "--hw", "a100", "--weight-group", "-3", "--no-progress"]) == 2
    assert "--weight-group: expected 0 (one clip per layer) or a positive size, got -3" in capsys.readouterr().err
    assert main(["search", "--hw", "a100", "--weight-only", "--act-float-bits", "8", "--no-progress"]) == 2
    assert "--act-float-bits: expected 16 or 32, got 8" in capsys.readouterr().err


def test_small_model_with_grouped_linear_rows_not_divisible_by_the_group():
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    space = convert_model(model, torch.randn(4, 10), weight_only_act_bits=32, weight_group=4)
    layer = space.layer("0")
    layer.set_fixed(4, 32)
    assert torch.isfinite(layer.quantized_weight()).all()


def test_weight_only_saves_only_where_the_device_has_weight_only_kernels():
    shape = LayerShape("fc", "linear", 1024, 1024, out_size=(1, 1))
    w4, w8 = LayerState(4, 16, 1024, 1024, 128, True), LayerState(8, 16, 1024, 1024, 128, True)
    a100, t4 = cost_model_for("a100"), cost_model_for("t4")
    assert a100.params.weight_only_kernels and not t4.params.weight_only_kernels
    assert (
        a100.layer_cost(shape, w4) < a100.layer_cost(shape, w8) < a100.layer_cost(shape, LayerState(16, 16, 1024, 1024))
    )
    assert t4.layer_cost(shape, w4) == t4.layer_cost(shape, w8)  # runs as float: fewer weight bits save nothing
