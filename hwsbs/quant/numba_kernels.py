"""The fused quantiser's kernels as single-pass numba loops, the default on CPU (issue 16).

:mod:`hwsbs.quant.kernels` makes about twelve vectorised torch passes over an activation in the
backward (each reading and writing a full tensor) and four in the forward. Here each is one
vectorised loop over the input that does every step per element, run by run of one mask value,
summing the reductions (``grad_v``, ``grad_v_out``, ``grad_mask``, gate dots) as it goes (float64).

Exactness: every elementwise result (the forward's output, ``grad_x``) repeats the torch kernel's
float32 operations in the same order (``x / v``, the clamp, ``(z + 1) / 2``, ``z * L``, round half
to even, ``/ L``, ...; no fastmath), so it is bit-identical. The reductions are summed in float64
(torch sums float32 in its own order), so they agree to float32 rounding, not bit for bit.

Applies to contiguous float32 CPU tensors (not while autograd records: the loops make no graph)
with a ``mask`` whose non-singleton dimensions are one block of ``x``'s (a channel mask of a
convolution's or a linear layer's input); every other call runs the torch kernel. With more than
one torch thread the loops run on as many numba threads, one contiguous chunk of the input and
its own partial sums each. :func:`use_numba_kernels` or ``HWSBS_NUMBA=0`` switch them off;
without numba, or where numba fails to compile them (one warning), the torch kernels run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import kernels

__all__ = ["HAVE_NUMBA", "kernel", "numba_kernels_enabled", "use_numba_kernels", "warm_up"]

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without the kernels extra
    HAVE_NUMBA = False

Array = np.ndarray  # the loops' arguments: 1-d float32 arrays unless named otherwise

_STATE: dict[str, Any] = {"enabled": os.environ.get("HWSBS_NUMBA", "1").strip() != "0", "failed": False}

#: Masks whose runs (one channel's elements) are shorter than this are expanded to one period
#: (``inner * C`` values, at most ``_PERIOD``) and read as stretches: short runs cost per run.
_SHORT_RUN, _PERIOD = 256, 1 << 14
#: Gate dots summed in the backward's one pass (more widths: another pass per three).
_DOTS = 3

if HAVE_NUMBA:
    # The elementwise work is strict IEEE (no fastmath): LLVM vectorises it without changing a bit.
    # The loops that sum may reassociate (float64 lanes), the one liberty: their elementwise work is
    # a strict function's, which LLVM inlines with its own (no) flags, so only the sums reorder.
    _ONE, _TWO = np.float32(1.0), np.float32(2.0)

    @numba.njit(cache=True, fastmath=False)
    def _quantize(xi: Any, v: Any, level: Any, lo: Any) -> Any:  # pragma: no cover
        """``(t, z, q')`` of one element: ``t = x / v``, ``z`` normalised, ``q'`` quantised."""
        t = xi / v
        z = lo if t < lo else (_ONE if t > _ONE else t)  # clamp; NaN stays NaN
        z = (z + _ONE) / _TWO if lo < 0.0 else z  # signed
        q = np.rint(z * level) / level
        q = q * _TWO - _ONE if lo < 0.0 else q
        return t, z, q

    @numba.njit(cache=True, fastmath=False)
    def _terms(gi: Any, m: Any, xi: Any, p: Any, l0: Any, l1: Any, l2: Any) -> Any:  # pragma: no cover
        """One element's backward: ``grad_x`` and the terms of ``[sum g_c t / v, sum g_out q',
        sum grad q' v_out, dots...]`` (float32, as torch computes them); ``p`` as :func:`_params`."""
        v, v_out, level, lo, below = p
        g_out = gi * m  # grad * 1 without a mask: exact
        t, z, q = _quantize(xi, v, level, lo)
        g_z = g_out * v_out
        # threshold_backward's test on t - lo and 1 - t (value <= -denorm_min: blocked; NaN passes)
        g_c = lo - lo if (t - lo <= below or _ONE - t <= below) else g_z
        dots = (g_z * np.rint(z * l0), g_z * np.rint(z * l1), g_z * np.rint(z * l2))
        return g_c / v, g_c * (t / v), g_out * q, gi * (q * v_out), dots

    @numba.njit(cache=True, fastmath={"reassoc"})
    def _backward_run(
        g: Array, x: Array, gx: Array, m: Any, sums_m: Any, p: Any, lv: Any, acc: Array
    ) -> None:  # pragma: no cover
        """``grad_x`` into ``gx``; adds ``[s_v, s_vo, s_m, dots...]`` to ``acc`` (float64), the dots where
        ``lv`` (their levels) is not None. The mask is ``m[0]``, or with ``sums_m`` ``m[i]`` (a stretch of
        an expanded mask; ``s_m`` per element into ``sums_m``, in order). ``is None``: at compile time."""
        s_v = s_vo = s_m = d0 = d1 = d2 = 0.0
        l0, l1, l2 = (_ONE, _ONE, _ONE) if lv is None else lv
        for i in range(x.shape[0]):
            gxi, a, b, c, d = _terms(g[i], m[0] if sums_m is None else m[i], x[i], p, l0, l1, l2)
            gx[i] = gxi
            s_v += np.float64(a)
            s_vo += np.float64(b)
            if sums_m is None:
                s_m += np.float64(c)
            else:
                sums_m[i] += np.float64(c)
            if lv is not None:
                d0 += np.float64(d[0])
                d1 += np.float64(d[1])
                d2 += np.float64(d[2])
        for k, s in enumerate((s_v, s_vo, s_m, d0, d1, d2)):
            acc[k] += s

    @numba.njit(cache=True, fastmath=False)
    def _backward_pass(
        g: Array, x: Array, gx: Array, start: int, inner: int, mask: Array, p: Any, lv: Any, acc: Array, sm: Array
    ) -> None:  # pragma: no cover
        """One pass over flat elements ``start ..``, run by run of one mask value (element ``j`` in
        channel ``(j // inner) % C``; with ``inner`` 1 stretches of the expanded mask)."""
        i, n, period = 0, x.shape[0], mask.shape[0]
        if period == 0:  # no mask
            _backward_run(g, x, gx, np.ones(1, dtype=x.dtype), None, p, lv, acc)
        while i < n and period > 0:
            pos = start + i
            if inner == 1:
                c = pos % period
                seg = min(n - i, period - c)
                _backward_run(
                    g[i : i + seg], x[i : i + seg], gx[i : i + seg], mask[c : c + seg], sm[c : c + seg], p, lv, acc
                )
            else:
                seg = min(n - i, inner - pos % inner)
                c, acc[2] = (pos // inner) % period, 0.0
                _backward_run(g[i : i + seg], x[i : i + seg], gx[i : i + seg], mask[c : c + 1], None, p, lv, acc)
                sm[c] += acc[2]
            i += seg

    @numba.njit(cache=True, fastmath=False)
    def _forward_block(
        x: Array, out: Array, start: int, inner: int, scales: Array, p: Array
    ) -> None:  # pragma: no cover
        """Flat elements ``start ..``; element ``j`` is in channel ``(j // inner) % C`` of ``scales``."""
        v, level, lo = p[0], p[2], p[3]
        i, n, period = 0, x.shape[0], scales.shape[0]
        while i < n:
            # Views and range(len) only: an index LLVM cannot prove >= 0 keeps numba's wraparound
            # test on every access, and the loop does not vectorise (4x slower).
            pos = start + i
            if inner == 1:  # a stretch of the expanded scales
                c0 = pos % period
                seg = min(n - i, period - c0)
                x_s, out_s, s_s = x[i : i + seg], out[i : i + seg], scales[c0 : c0 + seg]
                for k in range(seg):
                    out_s[k] = _quantize(x_s[k], v, level, lo)[2] * s_s[k]
            else:  # a run of one scale
                seg = min(n - i, inner - pos % inner)
                x_s, out_s, s = x[i : i + seg], out[i : i + seg], scales[(pos // inner) % period]
                for k in range(seg):
                    out_s[k] = _quantize(x_s[k], v, level, lo)[2] * s
            i += seg

    @numba.njit(cache=True, fastmath=False)
    def _backward_block(
        grad: Array,
        x: Array,
        gx: Array,
        start: int,
        inner: int,
        mask: Array,
        p: Array,
        levels: Array,
        sums: Array,
        sums_mask: Array,
    ) -> None:  # pragma: no cover
        """:func:`hwsbs.quant.kernels.quantize_backward` on flat elements ``start ..`` (channels as in
        the forward; no mask: ``mask`` empty); adds ``[sum g_c t / v, sum g_out q', dots...]`` to
        ``sums`` and ``sum grad q' v_out`` per channel to ``sums_mask`` (float64)."""
        pt = (p[0], p[1], p[2], p[3], p[4])
        acc, nl = np.zeros(3 + _DOTS), levels.shape[0]
        if nl == 0:
            _backward_pass(grad, x, gx, start, inner, mask, pt, None, acc, sums_mask)
        lv = np.zeros(_DOTS, dtype=levels.dtype)  # the dots past the widths are summed and dropped
        for k0 in range(0, nl, _DOTS):  # over three widths: the pass again (grad_x alike) for the next dots
            lv[: min(_DOTS, nl - k0)] = levels[k0 : k0 + _DOTS]
            part, part_mask = (acc, sums_mask) if k0 == 0 else (np.zeros_like(acc), np.zeros_like(sums_mask))
            _backward_pass(grad, x, gx, start, inner, mask, pt, (lv[0], lv[1], lv[2]), part, part_mask)
            for k in range(min(_DOTS, nl - k0)):
                sums[2 + k0 + k] += part[3 + k]
        sums[:2] += acc[:2]

    # Serial: the block function on the whole input. Parallel: one contiguous chunk per thread,
    # each with its own partial sums (a separate function: numba's cache keys ignore its flags).
    @numba.njit(cache=True, fastmath=False, parallel=True)
    def _forward_parallel(
        x: Array, out: Array, inner: int, scales: Array, p: Array, chunks: int
    ) -> None:  # pragma: no cover
        n = x.shape[0]
        for c in numba.prange(chunks):
            j0, j1 = c * n // chunks, (c + 1) * n // chunks
            _forward_block(x[j0:j1], out[j0:j1], j0, inner, scales, p)

    @numba.njit(cache=True, fastmath=False)
    def _reduce(sums: Array, sums_mask: Array, fold: int, levels: Array, signed: bool) -> Array:  # pragma: no cover
        """Chunk sums -> ``[grad_v, grad_v_out, dots..., grad_mask per channel...]``, rounded to float32
        once: ``grad_v = -sum g_c t / v``, ``dots[k] = sum (dL/dz_hat) round(z L_k) / L_k``; ``fold``
        positions of an expanded mask's period per channel."""
        res = np.zeros(2 + levels.shape[0] + sums_mask.shape[1] // fold)
        for b in range(sums.shape[0]):
            res[0] -= sums[b, 0]
            for k in range(1, 2 + levels.shape[0]):
                res[k] += sums[b, k]
            for j in range(sums_mask.shape[1]):
                res[2 + levels.shape[0] + j // fold] += sums_mask[b, j]
        for k in range(levels.shape[0]):  # signed: dL/dz_hat = 2 dL/dq'
            res[2 + k] *= (2.0 if signed else 1.0) / np.float64(levels[k])
        return res.astype(np.float32)

    @numba.njit(cache=True, fastmath=False)
    def _backward_serial(
        grad: Array, x: Array, gx: Array, inner: int, mask: Array, fold: int, p: Array, levels: Array
    ) -> Array:  # pragma: no cover
        sums, sums_mask = np.zeros((1, 2 + levels.shape[0])), np.zeros((1, mask.shape[0]))
        _backward_block(grad, x, gx, 0, inner, mask, p, levels, sums[0], sums_mask[0])
        return _reduce(sums, sums_mask, fold, levels, p[3] < 0.0)

    @numba.njit(cache=True, fastmath=False, parallel=True)
    def _backward_parallel(
        grad: Array, x: Array, gx: Array, inner: int, mask: Array, fold: int, p: Array, levels: Array, chunks: int
    ) -> Array:  # pragma: no cover
        n = x.shape[0]
        sums, sums_mask = np.zeros((chunks, 2 + levels.shape[0])), np.zeros((chunks, mask.shape[0]))
        for c in numba.prange(chunks):
            j0, j1 = c * n // chunks, (c + 1) * n // chunks
            g_c, x_c, gx_c = grad[j0:j1], x[j0:j1], gx[j0:j1]
            _backward_block(g_c, x_c, gx_c, j0, inner, mask, p, levels, sums[c], sums_mask[c])
        return _reduce(sums, sums_mask, fold, levels, p[3] < 0.0)


def _inner(x: Tensor, v: Tensor, v_out: Tensor | None, level: Tensor, mask: Tensor | None) -> int | None:
    """``inner``: flat element ``j`` of ``x`` meets mask value ``(j // inner) % C`` (``x`` viewed as
    ``(outer, C, inner)``). None where the loops do not apply: other than contiguous float32 CPU
    tensors (the scales one element), while autograd records (the loops build no graph), or where
    the mask's non-singleton dimensions are not one block of ``x``'s."""
    if x.dtype != torch.float32 or not x.is_cpu or not x.is_contiguous() or x.numel() == 0:
        return None
    recording = torch.is_grad_enabled()
    for t in (v, v_out, level, mask):  # a plain loop: this runs 80 times a step, every us shows
        if t is None:
            continue
        if t.dtype != x.dtype or not t.is_cpu or not t.is_contiguous() or (recording and t.requires_grad):
            return None
        if t is not mask and t.numel() != 1:
            return None
    if (recording and x.requires_grad) or (mask is not None and mask.dim() > x.dim()):  # > : not a mask of x
        return None
    if mask is None or mask.numel() == 1:
        return x.numel()
    shape = (1,) * (x.dim() - mask.dim()) + tuple(mask.shape)
    big = [i for i, s in enumerate(shape) if s != 1]
    if any(shape[i] != x.shape[i] for i in range(big[0], big[-1] + 1)):
        return None
    inner = 1
    for s in x.shape[big[-1] + 1 :]:
        inner *= s
    return inner


_DENORM_MIN = torch.finfo(torch.float32).smallest_normal * torch.finfo(torch.float32).eps


def _params(v: Tensor, v_out: Tensor | None, level: Tensor, signed: bool) -> np.ndarray:
    """``[v, v_out, L, lo, -denorm_min]`` as float32 (numba would widen float32 op a Python float)."""
    vo = v if v_out is None else v_out
    return np.array((float(v), float(vo), float(level), -1.0 if signed else 0.0, -_DENORM_MIN), dtype=np.float32)


@lru_cache(maxsize=32)
def _dot_levels(bits: tuple[int, ...]) -> np.ndarray:
    return np.array([float(2**b - 1) for b in bits], dtype=np.float32)


_NO_DOTS = np.zeros(0, dtype=np.float32)
_NO_MASK = np.zeros(0, dtype=np.float32)


def _flat(t: Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(-1)


def _runs(values: Tensor, inner: int) -> tuple[np.ndarray, int, int]:
    """``(values, inner, fold)`` for the loops: a short-run layout expanded to one period (``inner``
    1, ``fold`` positions per channel), else as it is (``fold`` 1)."""
    channels = values.numel()
    if 1 < inner < _SHORT_RUN and inner * channels <= _PERIOD:
        return _flat(values.detach().reshape(channels, 1).expand(channels, inner).contiguous()), 1, inner
    return _flat(values), inner, 1


def _threads() -> int:
    """Torch's thread count, set as numba's (1: the serial loops, no thread pool)."""
    config: Any = numba.config  # its attributes are set at import: no stubs
    n = min(torch.get_num_threads(), int(config.NUMBA_NUM_THREADS))
    if n > 1:
        numba.set_num_threads(n)
    return n


def forward(x: Tensor, v: Tensor, v_out: Tensor | None, level: Tensor, mask: Tensor | None, signed: bool) -> Tensor:
    """:func:`hwsbs.quant.kernels.quantize_forward` in one numba loop where it applies (else that kernel)."""
    inner = _inner(x, v, v_out, level, mask)
    if inner is None:
        return kernels.quantize_forward(x, v, v_out, level, mask, signed)
    vo = v if v_out is None else v_out
    scales, inner, _ = _runs(vo * mask if mask is not None else vo, inner)  # q (v m), as torch multiplies
    out = torch.empty_like(x)
    p, threads = _params(v, v_out, level, signed), _threads()
    if threads > 1:
        _forward_parallel(_flat(x), _flat(out), inner, scales, p, threads)
    else:
        _forward_block(_flat(x), _flat(out), 0, inner, scales, p)
    return out


def backward(
    grad: Tensor,
    x: Tensor,
    v: Tensor,
    v_out: Tensor | None,
    level: Tensor,
    mask: Tensor | None,
    signed: bool,
    bits: tuple[int, ...],
    need_gates: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """:func:`hwsbs.quant.kernels.quantize_backward` in one numba loop where it applies (else that kernel)."""
    inner = _inner(x, v, v_out, level, mask)
    usable = grad.shape == x.shape and grad.dtype == x.dtype and grad.is_contiguous() and not grad.requires_grad
    if inner is None or not usable or (need_gates and not bits):
        return kernels.quantize_backward(grad, x, v, v_out, level, mask, signed, bits, need_gates)
    dot_levels = _dot_levels(tuple(bits)) if need_gates else _NO_DOTS
    m, inner, fold = _runs(mask, inner) if mask is not None else (_NO_MASK, inner, 1)
    grad_x = torch.empty_like(x)
    p, threads = _params(v, v_out, level, signed), _threads()
    args = (_flat(grad), _flat(x), _flat(grad_x), inner, m, fold, p, dot_levels)
    sums = torch.from_numpy(_backward_parallel(*args, threads) if threads > 1 else _backward_serial(*args))
    n = 2 + dot_levels.shape[0]
    grad_mask = sums[n:].view(mask.shape) if mask is not None else None
    return grad_x, sums[0], sums[1], grad_mask, sums[2:n] if need_gates else None


def _warn(exc: BaseException) -> None:
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    print(f"hwsbs: warning: numba quantiser kernels failed ({detail}); using the torch kernels", file=sys.stderr)


def _guarded(fn: Callable[..., Any], eager: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, which on its first failure switches both kernels back to ``eager``'s (one warning)."""

    def call(*args: Any) -> Any:
        if _STATE["failed"]:
            return eager(*args)
        try:
            return fn(*args)
        except Exception as exc:  # a numba typing or compile error shows up at the first call
            _STATE["failed"] = True
            _warn(exc)
            return eager(*args)

    call.__name__ = f"guarded_{fn.__name__}"
    return call


_GUARDED = {
    "forward": _guarded(forward, kernels.quantize_forward),
    "backward": _guarded(backward, kernels.quantize_backward),
}


def kernel(name: str, eager: Callable[..., Any]) -> Callable[..., Any]:
    """The function to run for kernel ``name`` (``"forward"``, ``"backward"``): the numba kernel while
    :func:`numba_kernels_enabled` (it runs the torch kernel itself where it does not apply), else ``eager``."""
    return _GUARDED[name] if numba_kernels_enabled() and name in _GUARDED else eager


def use_numba_kernels(enabled: bool) -> bool:
    """Switch the numba quantiser kernels on (the default on CPU) or off; returns the previous setting."""
    old = bool(_STATE["enabled"])
    _STATE["enabled"] = bool(enabled)
    return old


def numba_kernels_enabled() -> bool:
    """True while the numba kernels are used: switched on, numba importable, no compile failure."""
    return bool(_STATE["enabled"]) and HAVE_NUMBA and not _STATE["failed"]


def warm_up() -> None:
    """Load the kernels (compile them on a cold cache, seconds) now, not inside a timed step: both
    kernels, masked, for this thread count; a failure is reported and handled as at a first call."""
    if not numba_kernels_enabled():
        return
    x = torch.linspace(-1.0, 1.0, 24).reshape(2, 3, 4)
    one, mask = torch.ones(()), torch.ones(1, 3, 1)
    with torch.no_grad():
        _GUARDED["forward"](x, one, None, one, mask, True)
        _GUARDED["backward"](x, x, one, None, one, mask, True, (1, 2), True)
