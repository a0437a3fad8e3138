"""The apb_cpu model reads measured kernel speeds from a profile's binary_kernels block (issue 18)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import hwsbs.lut.machine as machine
from cost_models import build_cost_model, cost_model_for
from cost_models.base import LayerShape, LayerState
from hardware_profiles import BUILTIN_DIR, load_profile
from hwsbs.apb.calibrate import (
    QUICK_SHAPES,
    GemmShape,
    append_to_profile,
    fit_speed,
    kernels_yaml,
    measure_binary_kernels,
)
from hwsbs.cli.main import main
from hwsbs.errors import CostModelError, ProfileError
from hwsbs.objectives import resolve_cost_model

CONV = LayerShape("c", "conv", 16, 32, (3, 3), in_size=(8, 8), out_size=(8, 8))


def test_fit_recovers_a_per_call_term_and_two_rates_exactly():
    rng = np.random.default_rng(0)
    work = rng.uniform(1e4, 1e8, size=(12, 2))
    truth = np.array([3e-5, 1 / 2.5e9, 1 / 8e8])
    seconds = truth[0] + work @ truth[1:]
    coef, err = fit_speed(work, seconds)
    np.testing.assert_allclose(coef, truth, rtol=1e-6)
    assert err < 1e-9


def test_a_fit_that_cannot_determine_a_rate_is_refused():
    work = np.array([[0.0], [0.0], [0.0]])  # no work varies: the rate is unidentifiable
    with pytest.raises(ProfileError, match="do not determine every rate"):
        fit_speed(work, np.array([1e-3, 1.1e-3, 0.9e-3]))


def test_builtin_x86_profile_prices_apb_from_its_block_in_closed_form():
    model = cost_model_for("x86-avx512", "apb_cpu")
    k = load_profile("x86-avx512").binary_kernels
    assert k is not None and k.measured_on
    state = LayerState(1, 8, 16, 32, fp_weights=37)
    positions, rows, per_row = 64, 32, 16 * 9  # 8x8 outputs, 32 kept rows of 144 weights
    binary = (
        k.binary_gemm.per_call_s
        + positions * rows * 3 * 8 / k.binary_gemm.word_ops_per_s  # ceil(144 / 64) = 3 words, 8 planes
        + positions * per_row * 8 / k.binary_gemm.packed_bits_per_s
    )
    sparse = (
        k.sparse_gemm.per_call_s
        + positions * 37 / k.sparse_gemm.macs_per_s
        + positions * per_row / k.sparse_gemm.activations_per_s  # the transposed activations
    )
    assert model.layer_cost(CONV, state) == pytest.approx(binary + sparse, rel=1e-12)
    assert model.layer_cost(CONV, LayerState(1, 8, 16, 32, fp_weights=0)) == pytest.approx(binary, rel=1e-12)
    macs = CONV.macs()
    int8 = k.int8_gemm.per_call_s + macs / k.int8_gemm.macs_per_s
    assert model.layer_cost(CONV, LayerState(4, 8, 16, 32)) == pytest.approx(int8, rel=1e-12)
    assert model.layer_cost(CONV, LayerState(32, 32, 16, 32)) > model.layer_cost(CONV, LayerState(8, 8, 16, 32))
    # more outliers never cost less, and a batch scales the work but not the per-call terms
    assert model.layer_cost(CONV, state) > model.layer_cost(CONV, LayerState(1, 8, 16, 32, fp_weights=3))
    assert model.layer_cost(CONV, state, batch=4) < 4 * model.layer_cost(CONV, state)


@pytest.mark.parametrize("profile", [None, "a100"])
def test_apb_cpu_without_measured_kernels_is_a_one_line_error(profile):
    with pytest.raises(CostModelError, match="no binary_kernels block") as info:
        build_cost_model("apb_cpu", load_profile(profile) if profile else None)
    assert "measure-kernels" in str(info.value) and "\n" not in str(info.value)


def test_kernels_measured_on_another_cpu_warn_once(monkeypatch):
    monkeypatch.setattr(
        machine, "machine_info", lambda *a, **k: {"cpu": "Imaginary", "cpu_family": "9", "cpu_model": "9"}
    )
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        resolve_cost_model("x86-avx512", "apb_cpu")
        resolve_cost_model("x86-avx512")  # its roofline default reads no measurement
    texts = [str(w.message) for w in got if "binary_kernels" in str(w.message)]
    assert len(texts) == 1
    assert texts[0].startswith("profile 'x86-avx512': its binary_kernels block was measured on ")
    assert texts[0].endswith("(measure this machine with hwsbs profiles measure-kernels)")


def test_measured_block_appends_to_a_profile_and_then_refuses_a_second(tmp_path):
    kernels = measure_binary_kernels(QUICK_SHAPES[:8] + (GemmShape(256, 576, 64, 8),), repeats=2)
    for speed in (kernels.sparse_gemm, kernels.int8_gemm, kernels.fp32_gemm):
        assert speed.per_call_s >= 0 and speed.macs_per_s > 0
    assert kernels.sparse_gemm.activations_per_s > 0
    assert "binary_kernels:" in kernels_yaml(kernels)
    path = tmp_path / "cpu.yaml"
    path.write_text((BUILTIN_DIR / "t4.yaml").read_text().replace("name: t4", "name: mycpu"))
    append_to_profile(path, kernels)
    loaded = load_profile(path)
    assert loaded.binary_kernels == kernels
    model = cost_model_for(loaded, "apb_cpu")
    assert model.layer_cost(CONV, LayerState(1, 8, 16, 32, fp_weights=5)) > 0
    with pytest.raises(ProfileError, match="already present"):
        append_to_profile(path, kernels)


def test_cli_measure_kernels_errors_are_one_line(tmp_path, capsys):
    assert main(["profiles", "measure-kernels", "--repeats", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--repeats: expected a positive integer" in err and len(err.splitlines()) == 1
    assert main(["profiles", "measure-kernels", "--into", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.yaml" in err and len(err.splitlines()) == 1
