"""The gate statistics' residual terms in one numba pass, on CPU (issue 16).

A gate statistic is ``mean |D(z, s_b) - z|`` for every candidate width but the widest, with ``z``
the normalised operand (an activation's fixed sample, or a standardised weight). In torch that is
~14 passes over the values per layer and step (the gather, the normalisation, and per width the
grid's three operations and the loss's two). Here one loop gathers and normalises each value and
writes its residual at every width; torch then takes each width's mean of those residuals.

Exactness: each residual repeats torch's float32 operations in the same order (``x / v``, the
clamp, ``(z + 1) / 2``, ``z * L``, round half to even, ``/ L``, ``|q - z|``; no fastmath), so the
residuals are bit-identical, and the mean is torch's own ``mean`` of a contiguous float32 row of
those residuals (each row starts 64-byte aligned, as a fresh torch tensor does): the statistics
are bit-identical to the torch code's. The loops apply to contiguous float32 CPU tensors while the
numba kernels are on (:func:`hwsbs.quant.numba_kernels.numba_kernels_enabled`); elsewhere
:func:`residual_means` returns None and the caller runs the torch code.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import numba_kernels

__all__ = ["residual_means"]

_ROW_ALIGN = 16  # float32 values per 64 bytes: every row of the residuals starts aligned
_TILE = 2048  # values normalised at a time (in L1)

if numba_kernels.HAVE_NUMBA:
    import numba

    _ONE, _TWO = np.float32(1.0), np.float32(2.0)

    @numba.njit(cache=True, fastmath=False)
    def _residuals(x: Any, index: Any, p: Any, levels: Any, out: Any) -> None:  # pragma: no cover
        """``out[k, i] = |round(z_i L_k) / L_k - z_i|``, ``z_i`` = normalised ``x[index[i]]`` (``index``
        empty: ``x[i]``); ``p = [v, lo]`` with ``lo`` -1 (signed) or 0."""
        v, lo = p[0], p[1]
        signed = lo < 0.0
        gather = index.shape[0] > 0
        n = index.shape[0] if gather else x.shape[0]
        tile = np.empty(_TILE, dtype=x.dtype)
        for t0 in range(0, n, _TILE):
            m = min(_TILE, n - t0)
            z_t = tile[:m]  # views and range(len): the loops vectorise (see numba_kernels)
            if gather:
                idx_t = index[t0 : t0 + m]
                for i in range(m):
                    z_t[i] = x[idx_t[i]]
            else:
                x_t = x[t0 : t0 + m]
                for i in range(m):
                    z_t[i] = x_t[i]
            for i in range(m):
                t = z_t[i] / v
                z = lo if t < lo else (_ONE if t > _ONE else t)  # clamp; NaN stays NaN
                z_t[i] = (z + _ONE) / _TWO if signed else z
            for k in range(levels.shape[0]):
                level, row = levels[k], out[k, t0 : t0 + m]
                for i in range(m):
                    row[i] = abs(np.rint(z_t[i] * level) / level - z_t[i])


@lru_cache(maxsize=32)
def _levels(bits: tuple[int, ...]) -> np.ndarray:
    return np.array([float(2**b - 1) for b in bits[:-1]], dtype=np.float32)


_ALL = np.zeros(0, dtype=np.int64)


def _applies(x: Tensor, v: Tensor, index: Tensor | None) -> bool:
    if not numba_kernels.numba_kernels_enabled() or x.dtype != torch.float32 or not x.is_cpu:
        return False
    if not x.is_contiguous() or x.numel() == 0 or v.numel() != 1 or not v.is_cpu or v.dtype != x.dtype:
        return False
    return index is None or (index.is_cpu and index.dtype == torch.int64 and index.is_contiguous())


def residual_means(
    x: Tensor, v: Tensor, signed: bool, bits: Sequence[int], index: Tensor | None = None
) -> Tensor | None:
    """``stack([l1_loss(D(z, s_b), z) for b in bits[:-1]])`` with ``z`` the normalised ``x`` (its
    values at ``index`` where given), bit-identical; None where the numba loop does not apply.

    Args:
        x: the values (any shape; read flat, detached).
        v: the clip (one value): ``z = clamp(x / v, 0, 1)``, signed ``(clamp(x / v, -1, 1) + 1) / 2``.
        signed: which normalisation.
        bits: the candidate widths (at least two).
        index: flat positions of a fixed sample, or None for every value.
    """
    if len(bits) < 2 or not _applies(x, v, index):
        return None
    levels = _levels(tuple(bits))
    n = x.numel() if index is None else index.numel()
    if n == 0:
        return None
    stride = -(-n // _ROW_ALIGN) * _ROW_ALIGN
    out = torch.empty(levels.shape[0], stride, dtype=x.dtype)
    p = np.array((float(v), -1.0 if signed else 0.0), dtype=np.float32)
    flat = x.detach().reshape(-1).numpy()
    positions = _ALL if index is None else index.numpy()
    try:
        _residuals(flat, positions, p, levels, out.numpy())
    except Exception as exc:  # a numba typing or compile error: the torch code from now on (one warning)
        numba_kernels._STATE["failed"] = True
        numba_kernels._warn(exc)
        return None
    return torch.stack([out[k, :n].mean() for k in range(levels.shape[0])])
