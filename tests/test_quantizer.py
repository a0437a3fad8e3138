"""Bit-sharing decomposition (method section 1) and bit-set validation."""

from __future__ import annotations

import pytest
import torch

from hwsbs.errors import ConfigError
from hwsbs.quant.quantizer import bit_sharing_terms, compose, quantize, step_size, validate_bit_candidates


def _edge_inputs(bits: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    parts = [torch.rand(10_000, generator=g, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)]
    for b in bits:  # exact grid points and exact ties (midpoints) of every grid
        n = 2**b - 1
        grid = torch.arange(n + 1, dtype=torch.float64) / n
        parts += [grid, (grid[:-1] + grid[1:]) / 2]
    return torch.cat(parts)


@pytest.mark.parametrize("bits", [(2, 4, 8), (1, 2, 4, 8), (2, 4), (4, 8)])
def test_lowest_level_plus_offsets_equals_direct_quantisation(bits):
    z = _edge_inputs(bits)
    terms, residuals = bit_sharing_terms(z, bits)
    assert len(terms) == len(bits) and len(residuals) == len(bits) - 1
    cumulative = terms[0]
    assert torch.allclose(cumulative, quantize(z, step_size(bits[0])), atol=1e-12)
    for j, b in enumerate(bits[1:], start=1):
        cumulative = cumulative + terms[j]
        direct = quantize(z, step_size(b))
        diff = (cumulative - direct).abs()
        s = step_size(b)
        # Equal everywhere except at exact ties of the finer grid, where round-half-even may
        # pick the other neighbour: never more than one step apart there.
        tie = ((z / s) - (z / s).floor() - 0.5).abs() < 1e-9
        assert torch.all(diff[~tie] < 1e-9), f"mismatch at {b} bits for non-tie inputs"
        assert torch.all(diff[tie] < s + 1e-9)


def test_offsets_land_on_the_finer_grid_and_stay_in_range():
    z = torch.rand(5000, dtype=torch.float64)
    terms, _ = bit_sharing_terms(z, (2, 4, 8))
    total = sum(terms)
    assert total.min() >= 0 and total.max() <= 1
    grid_index = total * 255
    assert torch.allclose(grid_index, grid_index.round(), atol=1e-7)


def test_compose_with_gates_selects_bitwidth():
    z = torch.rand(1000, dtype=torch.float64)
    terms, _ = bit_sharing_terms(z, (2, 4, 8))
    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    assert torch.allclose(compose(terms, [zero, one]), quantize(z, step_size(2)))  # closed g2 drops all above
    assert torch.allclose(compose(terms, [one, zero]), terms[0] + terms[1])
    assert torch.allclose(compose(terms, [one, one]), terms[0] + terms[1] + terms[2])


def test_straight_through_gradient_is_identity_when_all_gates_open():
    z = torch.rand(100, dtype=torch.float64, requires_grad=True)
    terms, _ = bit_sharing_terms(z, (2, 4, 8))
    sum(terms).sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))


@pytest.mark.parametrize(
    "bits,needle", [((2, 3, 8), "double"), ((0, 2), ">= 1"), ((), "at least one"), ((8, 16, 32), "at most 16")]
)
def test_bit_sets_that_do_not_double_are_rejected(bits, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_bit_candidates(bits)


@pytest.mark.parametrize("bits", [(2, 4, 8), (1, 2, 4, 8)])
def test_fused_gated_quantiser_matches_the_reference_in_value_and_gradient(bits):
    import itertools

    from hwsbs.quant.fused import gated_quantize

    g = torch.Generator().manual_seed(1)
    z0 = torch.rand(4096, generator=g, dtype=torch.float64)
    upstream = torch.randn(4096, generator=g, dtype=torch.float64)
    for pattern in itertools.product([0.0, 1.0], repeat=len(bits) - 1):
        z_ref = z0.clone().requires_grad_(True)
        gates_ref = torch.tensor(pattern, dtype=torch.float64, requires_grad=True)
        terms, _ = bit_sharing_terms(z_ref, bits)
        ref = compose(terms, list(gates_ref.unbind()))
        (ref * upstream).sum().backward()

        z_new = z0.clone().requires_grad_(True)
        gates_new = torch.tensor(pattern, dtype=torch.float64, requires_grad=True)
        new = gated_quantize(z_new, gates_new, bits)
        (new * upstream).sum().backward()

        assert torch.allclose(new, ref, atol=1e-12)
        assert torch.allclose(z_new.grad, z_ref.grad)
        assert torch.allclose(gates_new.grad, gates_ref.grad, rtol=1e-9, atol=1e-9), pattern


def test_sampled_activation_statistics_estimate_the_full_ones():
    """Activation gates read residual means on a fixed sample: exact for small tensors, within
    a percent for large ones, and the same sample every call (reproducible search)."""
    from hwsbs.quant.fused import ACT_STAT_SAMPLES, lower_grid_residuals, sampled_residuals

    gen = torch.Generator().manual_seed(3)
    small = torch.rand(4, 8, 16, 16, generator=gen)
    assert small.numel() <= ACT_STAT_SAMPLES
    assert torch.equal(sampled_residuals(small, (2, 4, 8)), lower_grid_residuals(small, (2, 4, 8))[0])
    large = torch.rand(64, 16, 32, 32, generator=gen) ** 2  # skewed, like post-ReLU activations
    full = lower_grid_residuals(large, (2, 4, 8))[0]
    est = sampled_residuals(large, (2, 4, 8))
    assert torch.allclose(est, full, rtol=0.01)
    assert torch.equal(est, sampled_residuals(large, (2, 4, 8)))
