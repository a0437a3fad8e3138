"""APB's CPU kernels: a bitwise binary GEMM and a CSR sparse-dense GEMM, plus torch references.

Binary weights ``b in {-1, +1}`` are bit-packed, 64 per ``uint64`` word (bit ``j`` of word ``i``
is weight ``64 i + j``; 1 means +1). Activations are unsigned integer codes (``a_bits`` wide),
decomposed into bit planes packed the same way. Then, exactly, in integers::

    sum_k b_k x_k = 2 * sum_p 2**p * popcount(W & X_p) - sum_k x_k

(AND + popcount per plane; with 1-bit activations this is the XNOR-popcount product up to the
same affine map). Padding bits are zero in both operands, so odd sizes need nothing else. The
outliers are a CSR matrix multiplied with the dense activations (float64 accumulation).

Compiled with numba when it is importable (the ``kernels`` extra); otherwise the torch
references run, after a one-line warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "HAVE_NUMBA",
    "pack_bits",
    "bit_planes",
    "binary_gemm",
    "binary_gemm_codes",
    "csr_gemm",
    "to_csr",
    "binary_gemm_reference",
    "csr_gemm_reference",
]

try:
    import numba
    from numba import types
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without the kernels extra
    HAVE_NUMBA = False
    warnings.warn("hwsbs.apb.kernels: numba is not importable; APB kernels run the torch reference", stacklevel=2)


# ---------------------------------------------------------------------------- packing (numpy)
def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Rows of booleans ``[R, K]`` -> ``uint64 [R, ceil(K / 64)]`` (little-endian bit order)."""
    rows, k = bits.shape
    words = -(-k // 64)
    padded = np.zeros((rows, words * 64), dtype=np.uint8)
    padded[:, :k] = bits
    packed = np.packbits(padded.reshape(rows, words, 8, 8)[..., ::-1], axis=-1, bitorder="big")
    # packbits gives one byte per 8 bits; view 8 little-endian bytes as a word
    return np.ascontiguousarray(packed.reshape(rows, words * 8)).view("<u8").astype(np.uint64)


def bit_planes(codes: np.ndarray, a_bits: int) -> np.ndarray:
    """Unsigned codes ``[M, K]`` -> packed planes ``uint64 [M, a_bits, ceil(K / 64)]``."""
    c = codes.astype(np.uint64)
    return np.ascontiguousarray(
        np.stack([pack_bits(((c >> np.uint64(p)) & np.uint64(1)) == 1) for p in range(a_bits)], 1)
    )


def to_csr(dense: np.ndarray, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zeros of ``[N, K]`` as CSR (``dtype`` values, int32 column indices and row pointers)."""
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int32)
    np.add.at(indptr, rows + 1, 1)
    return dense[rows, cols].astype(dtype), cols.astype(np.int32), np.cumsum(indptr).astype(np.int32)


# ---------------------------------------------------------------------------- compiled kernels
#: Output columns per block of the binary GEMM (its transposed weight block stays in L1).
_N_BLOCK = 128
#: GEMM rows per block of the CSR product (that block of the activations stays in L2).
_CSR_M_BLOCK = 128

if HAVE_NUMBA:

    @intrinsic
    def _popcount(typingctx: Any, x: Any) -> Any:
        """LLVM's ctpop (POPCNT; VPOPCNTQ where the loop vectorises on AVX-512)."""
        sig = types.uint64(types.uint64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.ctpop(args[0])

        return sig, codegen

    _pc: Any = _popcount  # typed for mypy (an intrinsic takes its typing context implicitly)

    @numba.njit(cache=True, fastmath=False)
    def _pack_planes_nb(codes: np.ndarray, planes: int) -> np.ndarray:  # pragma: no cover
        """Codes ``[M, K]`` -> plane words ``[M, planes, ceil(K / 64)]`` (bit j of word i: code 64 i + j)."""
        m_rows, k = codes.shape
        words = (k + 63) // 64
        out = np.zeros((m_rows, planes, words), dtype=np.uint64)
        for m in range(m_rows):
            for i in range(words):
                lo = i * 64
                hi = min(lo + 64, k)
                for p in range(planes):
                    word = np.uint64(0)
                    for j in range(lo, hi):
                        word |= ((np.uint64(codes[m, j]) >> np.uint64(p)) & np.uint64(1)) << np.uint64(j - lo)
                    out[m, p, i] = word
        return out

    @numba.njit(cache=True, fastmath=False, inline="always")
    def _plane(x: np.ndarray, m: int, p: int, i: int) -> np.uint64:  # pragma: no cover
        return x[m, p, i] if p < x.shape[1] else np.uint64(0)

    @numba.njit(cache=True, fastmath=False)
    def _binary_gemm_nb(w_t: np.ndarray, x: np.ndarray, xsum: np.ndarray) -> np.ndarray:  # pragma: no cover
        """``2 * sum_p 2**p popcount(W & X_p) - sum x`` with ``w_t`` the packed signs ``[words, N]``.

        Tiled: ``_N_BLOCK`` outputs at a time (their weight words stay in L1); per activation word
        eight planes are combined in registers (one accumulator update per weight word), and the
        innermost loop runs over the outputs, contiguous in ``w_t``, so LLVM vectorises it.
        """
        words, n_out = w_t.shape
        m_rows, planes, _ = x.shape
        out = np.empty((m_rows, n_out), dtype=np.int64)
        acc = np.zeros(_N_BLOCK, dtype=np.int64)
        for n0 in range(0, n_out, _N_BLOCK):
            nb = min(n0 + _N_BLOCK, n_out) - n0
            for m in range(m_rows):
                acc[:nb] = 0
                for pg in range(0, planes, 8):
                    base = np.uint64(pg)
                    for i in range(words):
                        x0, x1 = _plane(x, m, pg, i), _plane(x, m, pg + 1, i)
                        x2, x3 = _plane(x, m, pg + 2, i), _plane(x, m, pg + 3, i)
                        x4, x5 = _plane(x, m, pg + 4, i), _plane(x, m, pg + 5, i)
                        x6, x7 = _plane(x, m, pg + 6, i), _plane(x, m, pg + 7, i)
                        if (x0 | x1 | x2 | x3 | x4 | x5 | x6 | x7) == 0:
                            continue
                        for n in range(nb):
                            wv = w_t[i, n0 + n]
                            t = _pc(wv & x0) + (_pc(wv & x1) << np.uint64(1)) + (_pc(wv & x2) << np.uint64(2))
                            t += (_pc(wv & x3) << np.uint64(3)) + (_pc(wv & x4) << np.uint64(4))
                            t += (_pc(wv & x5) << np.uint64(5)) + (_pc(wv & x6) << np.uint64(6))
                            t += _pc(wv & x7) << np.uint64(7)
                            acc[n] += np.int64(t << base)
                for n in range(nb):
                    out[m, n0 + n] = 2 * acc[n] - xsum[m]
        return out

    @numba.njit(cache=True, fastmath=False)
    def _binary_gemm_codes_nb(w_t: np.ndarray, codes: np.ndarray, planes: int) -> np.ndarray:  # pragma: no cover
        xsum = np.zeros(codes.shape[0], dtype=np.int64)
        for m in range(codes.shape[0]):
            for k in range(codes.shape[1]):
                xsum[m] += np.int64(codes[m, k])
        return _binary_gemm_nb(w_t, _pack_planes_nb(codes, planes), xsum)

    @numba.njit(cache=True, fastmath=False)
    def _csr_gemm_nb(
        values: np.ndarray, cols: np.ndarray, indptr: np.ndarray, x_t: np.ndarray
    ) -> np.ndarray:  # pragma: no cover
        """``(S @ x_t)`` as ``[N, M]`` from ``x_t`` ``[K, M]``: one vectorised axpy per non-zero."""
        m_rows = x_t.shape[1]
        n_out = indptr.shape[0] - 1
        out = np.zeros((n_out, m_rows), dtype=np.float64)
        for m0 in range(0, m_rows, _CSR_M_BLOCK):  # a block of x_t's columns stays in L2
            m1 = min(m0 + _CSR_M_BLOCK, m_rows)
            for n in range(n_out):
                row = out[n, m0:m1]  # 1-d views: LLVM vectorises the axpy
                for j in range(indptr[n], indptr[n + 1]):
                    v = np.float64(values[j])
                    xr = x_t[cols[j], m0:m1]
                    for m in range(m1 - m0):
                        row[m] += v * xr[m]
        return out


def _transposed(w_packed: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w_packed.T)


def binary_gemm(w_packed: np.ndarray, planes: np.ndarray, xsum: np.ndarray) -> np.ndarray:
    """``int64 [M, N]``: ``sum_k b[n, k] * x[m, k]`` from packed signs, packed planes and ``sum_k x``."""
    if HAVE_NUMBA:
        return _binary_gemm_nb(_transposed(w_packed), np.ascontiguousarray(planes), xsum.astype(np.int64))
    return _binary_gemm_np(w_packed, planes, xsum)


def binary_gemm_codes(w_packed: np.ndarray, codes: np.ndarray, a_bits: int) -> np.ndarray:
    """``int64 [M, N]``: ``codes [M, K] @ b.T`` for packed signs ``b`` ``[N, K]`` and unsigned
    ``a_bits``-wide integer codes (packed into bit planes inside the compiled kernel)."""
    if HAVE_NUMBA:
        return _binary_gemm_codes_nb(_transposed(w_packed), np.ascontiguousarray(codes), int(a_bits))
    return _binary_gemm_np(w_packed, bit_planes(codes, a_bits), codes.sum(1))


def csr_gemm(values: np.ndarray, cols: np.ndarray, indptr: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``float64 [M, N]``: ``x @ S.T`` for the CSR matrix ``S`` ``[N, K]``."""
    if HAVE_NUMBA:
        x_t = np.ascontiguousarray(np.asarray(x, dtype=np.float64).T)
        return _csr_gemm_nb(values, cols, indptr, x_t).T
    return csr_gemm_reference(values, cols, indptr, torch.from_numpy(np.asarray(x))).numpy()


def _binary_gemm_np(w_packed: np.ndarray, planes: np.ndarray, xsum: np.ndarray) -> np.ndarray:
    """The bitwise product without numba (bits unpacked, an int64 matrix product)."""
    words = w_packed.shape[1]
    w_bits = np.unpackbits(w_packed.view(np.uint8), bitorder="little").reshape(w_packed.shape[0], words * 64)
    x_bits = np.unpackbits(planes.view(np.uint8), bitorder="little").reshape(*planes.shape[:2], words * 64)
    weights = (1 << np.arange(planes.shape[1], dtype=np.int64))[None, :, None]
    codes = (x_bits.astype(np.int64) * weights).sum(1)  # [M, K]
    return 2 * (codes @ w_bits.T.astype(np.int64)) - xsum.astype(np.int64)[:, None]


# ---------------------------------------------------------------------------- torch references
def binary_gemm_reference(signs: Tensor, codes: Tensor) -> Tensor:
    """``int64 [M, N]``: ``codes [M, K] @ signs[N, K].T`` with signs in {-1, +1}, in int64."""
    return codes.to(torch.int64) @ signs.to(torch.int64).T


def csr_gemm_reference(values: np.ndarray, cols: np.ndarray, indptr: np.ndarray, x: Tensor) -> Tensor:
    """``float64 [M, N]``: the CSR product through a dense float64 matrix."""
    n_out = indptr.shape[0] - 1
    dense = torch.zeros(n_out, x.shape[1], dtype=torch.float64)
    rows = np.repeat(np.arange(n_out), np.diff(indptr))
    dense[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = torch.from_numpy(values.astype(np.float64))
    return x.to(torch.float64) @ dense.T
