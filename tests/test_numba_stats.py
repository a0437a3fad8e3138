"""The gate statistics' one-pass numba loop equals the torch code it replaces, bit for bit (issue 16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

from hwsbs.quant import numba_kernels  # noqa: E402
from hwsbs.quant.fused import _grid  # noqa: E402
from hwsbs.quant.numba_stats import residual_means  # noqa: E402


def _torch_stats(x: torch.Tensor, v: torch.Tensor, signed: bool, bits, index=None) -> torch.Tensor:
    flat = x.reshape(-1)
    if index is not None:
        flat = flat.index_select(0, index)
    z = (torch.clamp(flat / v, -1.0, 1.0) + 1.0) / 2.0 if signed else torch.clamp(flat / v, 0.0, 1.0)
    return torch.stack([F.l1_loss(_grid(z, b), z) for b in bits[:-1]])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [(2, 4, 8), (4, 8), (2, 3, 4, 5, 8)])
@pytest.mark.parametrize("n", [1, 7, 2048, 2049, 50_001])
def test_residual_means_are_the_torch_statistics_exactly(signed, bits, n):
    gen = torch.Generator().manual_seed(n + len(bits))
    x = torch.randn(n, generator=gen) * 3
    if n > 10:  # ties at the rounding midpoints and values past the clip
        x[:4] = torch.tensor([0.5, -0.5, 1e6, -1e6])
    v = torch.tensor(1.7)
    got = residual_means(x, v, signed, bits)
    assert got is not None
    assert torch.equal(got, _torch_stats(x, v, signed, bits))
    index = torch.randperm(n, generator=gen)[: max(n // 3, 1)].sort().values
    assert torch.equal(residual_means(x, v, signed, bits, index), _torch_stats(x, v, signed, bits, index))


def test_it_declines_what_the_loop_does_not_cover(monkeypatch):
    x, v = torch.randn(64), torch.tensor(1.0)
    assert residual_means(x.double(), v.double(), False, (2, 4, 8)) is None  # float64: the torch code
    assert residual_means(x[::2], v, False, (2, 4, 8)) is None  # not contiguous
    assert residual_means(x, v, False, (8,)) is None  # one width: no statistic
    monkeypatch.setattr(numba_kernels, "numba_kernels_enabled", lambda: False)
    assert residual_means(x, v, False, (2, 4, 8)) is None
