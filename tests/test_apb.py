"""APB (issue 18): the weight rule, its surrogate gradients, the kernels, export, size and the method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cost_models import LayerShape, LayerState, build_cost_model, cost_model_for
from hwsbs.apb.format import APB_TAU, apb_weight, band_mask, make_apb_layer, soft_weight
from hwsbs.apb.kernels import (
    _binary_gemm_np,
    binary_gemm,
    binary_gemm_codes,
    binary_gemm_reference,
    bit_planes,
    csr_gemm,
    csr_gemm_reference,
    pack_bits,
    to_csr,
)
from hwsbs.cli.main import main
from hwsbs.export.apb import export_apb, verify_apb
from hwsbs.models import build_model
from hwsbs.sbs.convert import convert_model
from tests.helpers import tiny_argv


def test_band_rule_is_exact():
    torch.manual_seed(0)
    w = torch.randn(500)
    alpha, delta = torch.tensor(0.8), torch.tensor(0.5)
    out = apb_weight(w.clone().requires_grad_(), alpha.requires_grad_(), delta.requires_grad_())
    inside = band_mask(w, alpha, delta)
    assert inside.any() and (~inside).any()
    assert torch.equal(out[inside].abs(), torch.full_like(out[inside], 0.8))
    assert torch.equal(torch.sign(out[inside]), torch.sign(w[inside]))
    assert torch.equal(out[~inside], w[~inside])


def test_alpha_delta_gradients_match_finite_differences_of_the_surrogate():
    torch.manual_seed(1)
    w = torch.randn(300, dtype=torch.float64)
    c = torch.randn(300, dtype=torch.float64)
    alpha = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    delta = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    (c * apb_weight(w, alpha, delta)).sum().backward()

    def f(a: float, d: float) -> float:
        return float(
            (
                c * soft_weight(w, torch.tensor(a, dtype=torch.float64), torch.tensor(d, dtype=torch.float64), APB_TAU)
            ).sum()
        )

    h = 1e-6
    ga = (f(0.7 + h, 0.4) - f(0.7 - h, 0.4)) / (2 * h)
    gd = (f(0.7, 0.4 + h) - f(0.7, 0.4 - h)) / (2 * h)
    assert float(alpha.grad) == pytest.approx(ga, rel=1e-5, abs=1e-8)
    assert float(delta.grad) == pytest.approx(gd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize(
    ("m", "k", "n", "bits"),
    [(1, 1, 1, 1), (3, 63, 5, 8), (7, 65, 3, 2), (5, 200, 9, 4), (2, 128, 4, 8), (9, 301, 263, 8), (4, 77, 130, 11)],
)
def test_bitwise_kernel_equals_the_reference_exactly(m, k, n, bits):
    """Odd sizes, more outputs than one block (128) and more than eight bit planes included."""
    rng = np.random.default_rng(m * 1000 + k)
    signs = rng.random((n, k)) < 0.5
    codes = rng.integers(0, 2**bits, (m, k))
    ref = binary_gemm_reference(torch.from_numpy(np.where(signs, 1, -1)), torch.from_numpy(codes)).numpy()
    assert np.array_equal(binary_gemm(pack_bits(signs), bit_planes(codes, bits), codes.sum(1)), ref)
    assert np.array_equal(binary_gemm_codes(pack_bits(signs), codes.astype(np.int32), bits), ref)
    assert np.array_equal(_binary_gemm_np(pack_bits(signs), bit_planes(codes, bits), codes.sum(1)), ref)


def test_sparse_kernel_equals_the_reference():
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((11, 37)) < 0.1, rng.integers(-9, 9, (11, 37)), 0).astype(np.float32)
    x = rng.integers(0, 255, (300, 37)).astype(np.float64)  # more rows than one block (128)
    values, cols, indptr = to_csr(dense)
    got = csr_gemm(values, cols, indptr, x)
    assert np.array_equal(got, csr_gemm_reference(values, cols, indptr, torch.from_numpy(x)).numpy())
    assert np.array_equal(got, x @ dense.T.astype(np.float64))


def test_export_agrees_with_the_search_model():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8)).eval()
    x = torch.randn(8, 1, 8, 8)
    space = convert_model(model, x, (2, 4, 8), prune=False)
    for _name, layer in space.layers():
        if not layer.pinned:
            make_apb_layer(layer, 0.1)
            layer.set_fixed(1, 8)
            layer.apb_freeze()
    exported = export_apb(space.model)
    assert verify_apb(space.model, exported, x) < 1e-5
    assert space.model(x).abs().max() > 0


def test_size_of_an_apb_layer_is_the_closed_form():
    shape = LayerShape("c", "conv", 16, 32, (3, 3))
    state = LayerState(1, 8, 16, 32, fp_weights=37)
    weights = 16 * 9 * 32
    assert build_cost_model("size").layer_cost(shape, state) == weights + 37 * (32 + 8)  # ceil(log2 144) = 8
    assert build_cost_model("size").layer_cost(shape, LayerState(1, 8, 16, 32)) == weights  # not APB: 1 bit each
    cpu = cost_model_for("x86-avx512", "apb_cpu")
    assert cpu.layer_cost(shape, state) > cpu.layer_cost(shape, LayerState(1, 8, 16, 32, fp_weights=0))


def test_apb_with_a_cost_model_that_cannot_price_it_is_a_one_line_error(tmp_path, capsys):
    argv = tiny_argv("search", "--method", "apb", "--cost", "bops", "--out", str(tmp_path / "r"), epochs=(0, 0, 0))
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "cannot price APB" in err and len(err.splitlines()) == 1


def test_apb_smoke_from_the_cli(tmp_path):
    out = tmp_path / "r"
    argv = tiny_argv("search", "--method", "apb", "--cost", "size", "--out", str(out), epochs=(1, 1, 0))
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["binary_fraction"] <= 1.0
    apb_layers = [layer for layer in result["layers"] if "fp_weights" in layer]
    assert apb_layers and all(layer["w_bits"] == 1 for layer in apb_layers)


@pytest.mark.slow
def test_apb_on_digits_is_mostly_binary_and_accurate(tmp_path):
    out = tmp_path / "r"
    argv = tiny_argv("search", "--method", "apb", "--cost", "size", "--out", str(out), subset=1024, epochs=(6, 4, 3))
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["binary_fraction"] >= 0.9
    assert result["accuracy"]["compressed"] >= result["accuracy"]["full_precision"] - 0.03
