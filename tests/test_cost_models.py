"""Cost models: hardware behaviour on the built-in profiles, the lookup table, caching, conformance."""

from __future__ import annotations

import math

import pytest

from cost_models import (
    CostModel,
    LayerShape,
    LayerState,
    build_cost_model,
    cost_model_for,
    default_cost_model_name,
    list_cost_models,
)
from cost_models.energy import mac_energy_pj
from cost_models.roofline import layer_bytes
from cost_models.units import format_cost
from hardware_profiles import builtin_profile_names, load_profile, validate_profile_data
from hardware_profiles.cost_params import RooflineParams
from hwsbs.errors import CostModelError
from hwsbs.testing import CostModelConformance, check_cost_model, default_shapes
from hwsbs.testing.cost_models import ConformanceError

CONV = LayerShape("conv", "conv", 64, 64, (3, 3), (1, 1), 1, (56, 56), (56, 56))
FC = LayerShape("fc", "linear", 4096, 4096)
DW = LayerShape("dw", "conv", 64, 64, (3, 3), (1, 1), 64, (28, 28), (28, 28))


def full(shape: LayerShape, w: int, a: int | None = None) -> LayerState:
    return LayerState(w, w if a is None else a, shape.in_channels, shape.out_channels)


def cost(hw: str, shape: LayerShape, w: int, a: int | None = None, name: str | None = None, batch: int = 1) -> float:
    return cost_model_for(hw, name).layer_cost(shape, full(shape, w, a), batch)


def test_builtin_models_registered():
    assert {"bops", "size", "roofline", "bit_serial", "energy", "lut"} <= set(list_cost_models())


@pytest.mark.parametrize("hw", ["bismo", "loom"])
def test_two_bit_conv_costs_a_sixteenth_of_eight_bit(hw):
    assert cost(hw, CONV, 2) / cost(hw, CONV, 8) == pytest.approx(1 / 16, rel=0.01)


def test_stripes_scales_with_activation_bits_only():
    assert cost("stripes", CONV, 2, 8) == cost("stripes", CONV, 8, 8) == cost("stripes", CONV, 16, 8)
    assert cost("stripes", CONV, 8, 4) == pytest.approx(cost("stripes", CONV, 8, 8) / 2, rel=1e-3)
    assert cost("stripes", CONV, 8, 2) == pytest.approx(cost("stripes", CONV, 8, 8) / 4, rel=1e-3)


def test_loom_fully_connected_scales_with_weight_bits_only():
    assert cost("loom", FC, 8, 2) == cost("loom", FC, 8, 8)
    assert cost("loom", FC, 2, 8) == pytest.approx(cost("loom", FC, 8, 8) / 4, rel=1e-3)


def test_bismo_cycles_follow_the_tiled_formula():
    model = cost_model_for("bismo")
    # M = 64 output channels, K = 64 x 9, N = 56 x 56 positions on an 8 x 256 x 8 array
    expected = 3 * 5 * math.ceil(64 / 8) * math.ceil(576 / 256) * math.ceil(3136 / 8)
    assert model.layer_cycles(CONV, full(CONV, 3, 5)) == expected
    assert model.layer_cost(CONV, full(CONV, 3, 5)) == pytest.approx(expected / 200e6)


def test_bitfusion_follows_the_simulator_formula():
    model = cost_model_for("bitfusion")
    for w, a in ((8, 8), (4, 8), (2, 2), (1, 1), (32, 32)):
        ew, ea = min(max(w, 2), 8), min(max(a, 2), 8)
        perf = (8 // ea) * (8 // ew)
        expected = 1 * math.ceil(64 / 32) * 56 * 56 * 3 * 3 * math.ceil(64 / (16 * perf))
        assert model.layer_cycles(CONV, full(CONV, w, a)) == expected, (w, a)


def test_h100_runs_four_bit_at_int8_cost():
    for shape in (CONV, FC):
        assert cost("h100", shape, 4) == cost("h100", shape, 8)
        assert cost("h100", shape, 2) == cost("h100", shape, 8)
        assert cost("h100", shape, 32) > cost("h100", shape, 8)  # float runs on FP16, half the INT8 rate


def test_a100_four_bit_is_cheaper_than_eight_bit():
    for shape in (CONV, FC):
        assert cost("a100", shape, 4) < cost("a100", shape, 8)


def test_memory_bound_linear_follows_bytes_moved():
    a100 = load_profile("a100")
    model = cost_model_for(a100)
    compute_s, memory_s = model.compute_and_memory_s(FC, full(FC, 8))
    assert memory_s > 10 * compute_s  # batch 1 matrix-vector product: memory bound
    bandwidth = a100.memory[0].bandwidth_bytes_per_s
    for bits in (4, 8):
        moved = layer_bytes(FC, 4096, 4096, bits, bits, 1)
        assert moved == pytest.approx((4096 * 4096 * bits + 2 * 4096 * bits) / 8)
        assert cost("a100", FC, bits) == pytest.approx(moved / bandwidth)
    assert cost("a100", FC, 4) / cost("a100", FC, 8) == pytest.approx(0.5)


def test_roofline_overhead_efficiency_and_packed_operands():
    base = {
        "schema_version": 1,
        "name": "toy",
        "kind": "gpu",
        "sources": ["test"],
        "precisions": [{"w_bits": 8, "a_bits": 8, "ops_per_s": 1e12}],
        "memory": [{"name": "dram", "bandwidth_bytes_per_s": 1e9}],
    }
    plain = validate_profile_data({**base, "cost_model": {"name": "roofline"}}, "t")
    tuned = validate_profile_data(
        {
            **base,
            "cost_model": {
                "name": "roofline",
                "per_layer_overhead_s": 1e-5,
                "memory_efficiency": 0.5,
                "operands_at_executed_precision": False,
            },
        },
        "t",
    )
    state = full(FC, 4)
    p, t = build_cost_model("roofline", plain), build_cost_model("roofline", tuned)
    # packed 4-bit operands move half the bytes, at half the bandwidth: the same memory time
    assert t.layer_cost(FC, state) == pytest.approx(p.layer_cost(FC, state) + 1e-5)


def test_roofline_rounds_channels_up_to_the_tile():
    model = cost_model_for("a100")
    narrow = LayerState(8, 8, 64, 49)
    rounded = LayerState(8, 8, 64, 64)
    c1, _ = model.compute_and_memory_s(CONV, narrow, 64)
    c2, _ = model.compute_and_memory_s(CONV, rounded, 64)
    assert c1 == c2  # 49 channels run as 64 on the INT8 tile of 16


def test_energy_scales_with_bits_and_needs_figures():
    fusion = load_profile("bitfusion")
    e = fusion.energy
    assert mac_energy_pj(e, 8, 8, "int") == pytest.approx(0.2 + 0.03 + (0.1 - 0.03) * 8 / 24)
    assert mac_energy_pj(e, 4, 4, "int") == pytest.approx(0.2 / 4 + 0.03)
    assert mac_energy_pj(e, 32, 32, "float") == pytest.approx(3.7 + 0.9)
    model = cost_model_for(fusion, "energy")
    assert model.unit == "J"
    assert (
        cost("bitfusion", CONV, 2, name="energy")
        < cost("bitfusion", CONV, 4, name="energy")
        < cost("bitfusion", CONV, 8, name="energy")
    )
    with pytest.raises(CostModelError, match="profile 'a100': energy:"):
        cost_model_for("a100", "energy")


def test_override_on_a_profile_without_what_the_model_needs():
    with pytest.raises(CostModelError) as info:
        cost_model_for("h100", "bit_serial")
    message = str(info.value)
    assert "\n" not in message and "array" in message and "h100" in message
    with pytest.raises(CostModelError, match="needs a hardware profile"):
        build_cost_model("roofline")
    with pytest.raises(CostModelError, match="unknown cost model 'nope'"):
        cost_model_for("a100", "nope")


def test_override_uses_model_defaults_and_profile_device_fields():
    data = {
        "schema_version": 1,
        "name": "toy",
        "kind": "gpu",
        "sources": ["test"],
        "cost_model": {"name": "bops"},
        "precisions": [{"w_bits": 8, "a_bits": 8, "ops_per_s": 1e12}],
        "memory": [{"name": "dram", "bandwidth_bytes_per_s": 1e9}],
    }
    model = build_cost_model("roofline", validate_profile_data(data, "toy.yaml"))
    assert model.params == RooflineParams()  # the profile's cost_model block is for bops
    assert model.layer_cost(FC, full(FC, 8)) > 0
    with pytest.raises(CostModelError, match="profile 'bitfusion': precisions:"):
        cost_model_for("bitfusion", "roofline")  # an accelerator profile lists no throughputs


def test_override_bops_works_everywhere():
    for hw in builtin_profile_names():
        model = cost_model_for(hw, "bops")
        assert model.layer_cost(CONV, full(CONV, 2)) == CONV.macs() * 4


def test_default_cost_model_name():
    assert default_cost_model_name(load_profile("bismo")) == "bit_serial"
    assert default_cost_model_name(load_profile("a100")) == "roofline"


def test_cached_layer_cost_memoises():
    model = cost_model_for("a100")
    state = full(CONV, 4)
    first = model.cached_layer_cost(CONV, state)
    assert model.cached_layer_cost(CONV, state) == first == model.layer_cost(CONV, state)
    info = model.__dict__["_layer_cost_cache"].cache_info()
    assert info.hits == 1 and info.misses == 1


def test_format_cost():
    assert format_cost(1.234e-4, "s") == "123.4 us"
    assert format_cost(4.2e9, "BOPs") == "4.2 GBOPs"
    assert format_cost(0, "J") == "0 J"


def buildable(hw: str) -> list[str]:
    names = []
    for name in list_cost_models():
        try:
            cost_model_for(hw, name)
        except CostModelError:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("hw", sorted(builtin_profile_names()))
def test_every_builtin_model_on_every_builtin_profile_conforms(hw):
    names = buildable(hw)
    assert load_profile(hw).cost_model.name in names
    for name in names:
        check_cost_model(cost_model_for(hw, name))


def test_conformance_catches_a_broken_model():
    class Decreasing(CostModel):
        name, metric, unit = "decreasing", "bops", "BOPs"

        def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
            return float(shape.macs(state.kept_in, state.kept_out) / state.w_bits)

    with pytest.raises(ConformanceError, match="more bits cost less"):
        check_cost_model(Decreasing())

    class Negative(Decreasing):
        def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
            return -1.0

    with pytest.raises(ConformanceError, match="finite non-negative"):
        check_cost_model(Negative())


class TestRooflineOnT4(CostModelConformance):
    """The pytest mix-in plugin authors use, exercised on a built-in."""

    def make_cost_model(self) -> CostModel:
        return cost_model_for("t4")


# --- lookup tables -----------------------------------------------------------------------------

PRUNED = LayerShape("layer1.conv1", "conv", 64, 64, (3, 3), (1, 1), 1, (8, 8), (8, 8))


def lut_profile(entries: list[dict], fallback: str = "error", **params) -> object:
    data = {
        "schema_version": 1,
        "name": "lut-toy",
        "kind": "gpu",
        "sources": ["test"],
        "cost_model": {"name": "lut", **params},
        "lookup_table": {"fallback": fallback, "entries": entries},
    }
    return validate_profile_data(data, "lut-toy.yaml")


def grid_entries(shape: LayerShape, w: int, a: int, scale: float = 1.0) -> list[dict]:
    """kept_in x kept_out grid {32, 64}^2 with latency = scale x (1 + kin/64 + 2 kout/64) us."""
    return [
        {
            "signature": shape.signature,
            "w_bits": w,
            "a_bits": a,
            "kept_in": i,
            "kept_out": o,
            "mean_s": scale * (1 + i / 64 + 2 * o / 64) * 1e-6,
            "std_s": 1e-8,
        }
        for i in (32, 64)
        for o in (32, 64)
    ]


def test_lut_interpolates_over_kept_channels():
    model = build_cost_model("lut", lut_profile(grid_entries(PRUNED, 8, 8)))
    # on the grid
    assert model.layer_cost(PRUNED, LayerState(8, 8, 64, 64)) == pytest.approx(4e-6)
    assert model.layer_cost(PRUNED, LayerState(8, 8, 32, 32)) == pytest.approx(2.5e-6)
    # between grid points: bilinear = exact for this plane
    assert model.layer_cost(PRUNED, LayerState(8, 8, 48, 40)) == pytest.approx((1 + 48 / 64 + 80 / 64) * 1e-6)
    mean, std = model.layer_cost_spread(PRUNED, LayerState(8, 8, 48, 40))
    assert std == pytest.approx(1e-8)


def test_lut_outside_grid_proportional_or_clamped():
    entries = grid_entries(PRUNED, 8, 8)
    prop = build_cost_model("lut", lut_profile(entries))
    clamp = build_cost_model("lut", lut_profile(entries, outside_grid="clamp"))
    at_min = prop.layer_cost(PRUNED, LayerState(8, 8, 32, 32))
    assert prop.layer_cost(PRUNED, LayerState(8, 8, 32, 16)) == pytest.approx(at_min / 2)
    assert clamp.layer_cost(PRUNED, LayerState(8, 8, 32, 16)) == pytest.approx(at_min)


def test_lut_depthwise_line_and_batch_scaling():
    entries = [
        {"signature": DW.signature, "w_bits": 8, "a_bits": 8, "kept_in": k, "kept_out": k, "mean_s": k * 1e-7}
        for k in (32, 64)
    ]
    model = build_cost_model("lut", lut_profile(entries))
    assert model.layer_cost(DW, LayerState(8, 8, 48, 48)) == pytest.approx(48e-7)
    assert model.layer_cost(DW, LayerState(8, 8, 64, 64), batch=4) == pytest.approx(4 * 64e-7)


def test_lut_missing_signature_names_it():
    model = build_cost_model("lut", lut_profile(grid_entries(PRUNED, 8, 8)))
    with pytest.raises(CostModelError) as info:
        model.layer_cost(CONV, full(CONV, 8))
    message = str(info.value)
    assert CONV.signature in message and "'conv'" in message and "\n" not in message


def test_lut_bit_pair_fallback():
    entries = grid_entries(PRUNED, 8, 8) + grid_entries(PRUNED, 32, 32, scale=3.0)
    strict = build_cost_model("lut", lut_profile(entries, fallback="error"))
    with pytest.raises(CostModelError, match=r"no 4/4-bit entry .*measured: 8/8, 32/32"):
        strict.layer_cost(PRUNED, LayerState(4, 4, 64, 64))
    wider = build_cost_model("lut", lut_profile(entries, fallback="next_wider"))
    assert wider.layer_cost(PRUNED, LayerState(4, 4, 64, 64)) == wider.layer_cost(PRUNED, LayerState(8, 8, 64, 64))
    assert wider.layer_cost(PRUNED, LayerState(16, 16, 64, 64)) == pytest.approx(12e-6)


def test_lut_incomplete_grid_is_an_error():
    entries = grid_entries(PRUNED, 8, 8)[:3]
    model = build_cost_model("lut", lut_profile(entries))
    with pytest.raises(CostModelError, match="kept_in x kept_out grid: missing kept_in=64, kept_out=64"):
        model.layer_cost(PRUNED, LayerState(8, 8, 64, 64))


def test_lut_conformance_on_a_table_covering_the_default_shapes():
    entries = []
    for shape in default_shapes():
        for bits in (2, 4, 8, 32):
            ins = sorted({max(1, shape.in_channels // 2), shape.in_channels})
            outs = sorted({max(1, shape.out_channels // 2), shape.out_channels})
            if shape.is_depthwise:
                ins = outs
            for i in ins:
                for o in outs:
                    if shape.is_depthwise and i != o:
                        continue
                    entries.append(
                        {
                            "signature": shape.signature,
                            "w_bits": bits,
                            "a_bits": bits,
                            "kept_in": i,
                            "kept_out": o,
                            "mean_s": (1 + shape.macs(i, o) * bits / 1e9) * 1e-6,
                        }
                    )
    model = build_cost_model("lut", lut_profile(entries, fallback="next_wider"))
    assert model.monotone is False  # measured tables may be noisy
    check_cost_model(model)
