"""The numba quantiser kernels (issue 16) against the torch kernels of :mod:`hwsbs.quant.kernels`.

Elementwise results (the forward's output, ``grad_x``) must be bit-identical; the sums (``grad_v``,
``grad_v_out``, ``grad_mask``, the gate dots) are taken in float64 there and in float32 by torch,
so they agree to float32 rounding. Also: the dispatch (default on, the switch, ``HWSBS_NUMBA=0``,
``--compile``), the torch path for what the loops do not cover, and the fallback on a failure.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("numba")

from hwsbs.quant import compiled, fused_layers  # noqa: E402
from hwsbs.quant import numba_kernels as nk  # noqa: E402
from hwsbs.quant.kernels import quantize_backward as torch_backward  # noqa: E402
from hwsbs.quant.kernels import quantize_forward as torch_forward  # noqa: E402
from hwsbs.quant.layers import SBSConv2d  # noqa: E402

BITS = (2, 4, 8)
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _restore_state():
    state = dict(nk._STATE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial loops (tests that patch them rely on it), unless a test says
    yield
    nk._STATE.update(state)
    torch.set_num_threads(threads)


@pytest.fixture
def numba_only(monkeypatch):
    """Fail where the torch kernels would run: the call under test must take the numba loops (the
    references here are this module's own names for them)."""

    def torch_kernel(*args, **kwargs):
        raise AssertionError("the torch kernel ran")

    monkeypatch.setattr(nk.kernels, "quantize_forward", torch_kernel)
    monkeypatch.setattr(nk.kernels, "quantize_backward", torch_kernel)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int64)


def _inputs(shape, mask_shape, signed, v_out, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 0.8  # some beyond the clip (v = 0.9): the clamp's edges
    x = x if signed else x.relu()
    grad = torch.randn(shape, generator=gen)
    mask = None if mask_shape is None else (torch.rand(mask_shape, generator=gen) > 0.3).float()
    v = torch.tensor(0.9)
    return x, grad, v, torch.tensor(1.7) if v_out else None, torch.tensor(15.0), mask


def _compare(x, grad, v, v_out, level, mask, signed, bits, need_gates):
    """numba (``nk.forward``/``nk.backward``) against the torch kernels."""
    ref = torch_forward(x, v, v_out, level, mask, signed)
    ref_b = torch_backward(grad, x, v, v_out, level, mask, signed, bits, need_gates)
    out = nk.forward(x, v, v_out, level, mask, signed)
    new_b = nk.backward(grad, x, v, v_out, level, mask, signed, bits, need_gates)
    assert torch.equal(_bits(out), _bits(ref))  # bit for bit, signed zeros included
    assert torch.equal(_bits(new_b[0]), _bits(ref_b[0]))
    for name, r, n in zip(("grad_v", "grad_v_out", "grad_mask", "dots"), ref_b[1:], new_b[1:]):
        if r is None:
            assert n is None, name
            continue
        assert n.shape == r.shape and n.dtype == r.dtype, name
        scale = max(1.0, float(r.abs().max()))
        torch.testing.assert_close(n, r, rtol=RTOL, atol=RTOL * scale, msg=name)


MASKS = {  # x's shape, the mask's shape
    "none": ((5, 6, 7, 9), None),
    "conv": ((5, 6, 7, 9), (1, 6, 1, 1)),
    "linear": ((11, 13), (13,)),
    "linear_tokens": ((3, 5, 13), (1, 13)),
}


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("mask_kind", sorted(MASKS))
@pytest.mark.parametrize("v_out", [False, True])
@pytest.mark.parametrize("need_gates", [False, True])
def test_kernels_match_the_torch_kernels(signed, mask_kind, v_out, need_gates, numba_only):
    shape, mask_shape = MASKS[mask_kind]
    x, grad, v, vo, level, mask = _inputs(shape, mask_shape, signed, v_out)
    _compare(x, grad, v, vo, level, mask, signed, BITS, need_gates)


@pytest.mark.parametrize("bits", [BITS, (4, 8), (2, 3, 4, 5, 8)])
@pytest.mark.parametrize("level", [3.0, 255.0])
def test_every_width_list_and_selected_level(bits, level, numba_only):
    x, grad, v, vo, _, mask = _inputs((4, 9, 5, 3), (1, 9, 1, 1), True, True, seed=1)
    _compare(x, grad, v, vo, torch.tensor(level), mask, True, bits, True)


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_tiles_and_threads(threads, numba_only):
    """Over several blocks (32 Ki elements) and tiles, channels crossing both; serial and parallel."""
    torch.set_num_threads(threads)
    cases = [  # long runs; no mask; linear (runs of 1); short runs (one period); short, too many for one
        ((3, 7, 61, 37), (1, 7, 1, 1)),
        ((70001,), None),
        ((257, 300), (300,)),
        ((9, 64, 8, 8), (1, 64, 1, 1)),
        ((3, 300, 10, 10), (1, 300, 1, 1)),
    ]
    for shape, mask_shape in cases:
        x, grad, v, vo, level, mask = _inputs(shape, mask_shape, False, True, seed=2)
        _compare(x, grad, v, vo, level, mask, False, BITS, True)


def test_odd_sizes_and_special_values(numba_only):
    for shape in ((1,), (3,), (2, 1, 1, 1), (7, 3, 1, 5)):
        for signed in (False, True):
            x, grad, v, vo, level, _ = _inputs(shape, None, signed, True, seed=3)
            _compare(x, grad, v, vo, level, None, signed, BITS, True)
    x, grad, v, vo, level, mask = _inputs((2, 4, 3, 3), (1, 4, 1, 1), True, False, seed=4)
    specials = [0.0, -0.0, 0.9, -0.9, 1e-40, -1e-40, float("inf"), -float("inf"), 5.0, -5.0]
    x.view(-1)[: len(specials)] = torch.tensor(specials)
    grad.view(-1)[:4] = torch.tensor([0.0, -0.0, 1e-40, 3.0])
    ref = torch_forward(x, v, vo, level, mask, True)
    assert torch.equal(_bits(nk.forward(x, v, vo, level, mask, True)), _bits(ref))
    ref_gx = torch_backward(grad, x, v, vo, level, mask, True, BITS, True)[0]
    assert torch.equal(_bits(nk.backward(grad, x, v, vo, level, mask, True, BITS, True)[0]), _bits(ref_gx))


def _pair(seed: int):
    """A calibrated prunable producer and its consumer (the producer's pruning gates mask its input)."""
    torch.manual_seed(seed)
    producer = SBSConv2d.from_module(nn.Conv2d(3, 8, 3, padding=1), BITS, 2, 0.5, 1.0)
    consumer = SBSConv2d.from_module(nn.Conv2d(8, 6, 3, padding=1), BITS, 2, 0.5, 1.0)
    producer.prunable = True
    consumer.__dict__["mask_source"] = producer
    x, h = torch.randn(4, 3, 9, 9), torch.randn(4, 8, 9, 9).relu()
    producer(x)
    consumer(h)  # calibration on the first batch
    with torch.no_grad():  # a pruning threshold between the groups: some pruned, some kept
        producer.p_theta.copy_(producer.pruning_statistics().median())
    return producer, consumer, h


def _step(layers, consumer, h, use_numba):
    nk.use_numba_kernels(use_numba)
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    ema = consumer.a_residual_ema.clone()
    x = h.clone().requires_grad_(True)
    out = consumer(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
    consumer.a_residual_ema.copy_(ema)  # the step moved the running statistic: the next starts alike
    grads = {
        f"{i}.{n}": p.grad.clone()
        for i, layer in enumerate(layers)
        for n, p in layer.named_parameters()
        if p.grad is not None
    }
    return out.detach(), x.grad.clone(), grads


def test_a_search_mode_layer_step_matches_with_and_without_numba(monkeypatch):
    producer, consumer, h = _pair(0)
    calls = []
    for name in ("_forward_block", "_backward_serial"):
        real = getattr(nk, name)
        monkeypatch.setattr(nk, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    for w_open, a_open in itertools.product([(False, True), (True, True), (True, False)], repeat=2):
        with torch.no_grad():  # open or close each bit gate by its threshold
            consumer.w_theta.copy_(consumer.weight_statistics() + torch.tensor([-0.3 if o else 0.3 for o in w_open]))
            a_rel = consumer.a_residual_ema / consumer.a_scale
            consumer.a_theta.copy_(a_rel + torch.tensor([-0.3 if o else 0.3 for o in a_open]))
        calls.clear()
        out_t, gx_t, grads_t = _step([producer, consumer], consumer, h, False)
        assert not calls
        out_n, gx_n, grads_n = _step([producer, consumer], consumer, h, True)
        assert {"_forward_block", "_backward_serial"} <= set(calls)
        assert torch.equal(out_n, out_t)
        assert torch.equal(gx_n, gx_t)
        assert grads_t.keys() == grads_n.keys()
        for key in grads_t:  # gate gradients are differences of dots: torch's float32 dots show at ~1e-6
            torch.testing.assert_close(grads_n[key], grads_t[key], rtol=RTOL, atol=1e-5, msg=key)


def test_switch_and_dispatch():
    assert nk.numba_kernels_enabled()  # the default where numba imports
    nk.warm_up()  # loads both kernels, fails nothing
    assert nk.numba_kernels_enabled()
    assert nk.kernel("forward", torch_forward) is not torch_forward
    assert nk.use_numba_kernels(False) is True
    assert not nk.numba_kernels_enabled()
    assert nk.kernel("forward", torch_forward) is torch_forward
    assert fused_layers._kernel("backward", torch_backward) is torch_backward
    assert nk.use_numba_kernels(True) is False
    assert fused_layers._kernel("backward", torch_backward) is nk.kernel("backward", len)
    try:  # --compile: the compiled torch kernels, not numba's
        compiled.compile_quantizers(True, notice=False)
        fn = fused_layers._kernel("backward", torch_backward)
        assert fn is compiled.kernel("backward", torch_backward)
        assert fn is not nk.kernel("backward", torch_backward)
    finally:
        compiled.compile_quantizers(False)


def test_without_numba_the_torch_kernels_run(monkeypatch):
    monkeypatch.setattr(nk, "HAVE_NUMBA", False)
    assert not nk.numba_kernels_enabled()
    assert fused_layers._kernel("forward", torch_forward) is torch_forward
    nk.warm_up()  # nothing to load


def test_environment_variable_turns_it_off():
    code = "from hwsbs.quant import numba_kernels as nk; print(nk.numba_kernels_enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "HWSBS_NUMBA": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_what_the_loops_do_not_cover_takes_the_torch_path(monkeypatch):
    ran = []
    monkeypatch.setattr(nk, "_forward_block", lambda *a: ran.append("numba"))
    monkeypatch.setattr(nk, "_backward_serial", lambda *a: ran.append("numba"))
    x, grad, v, vo, level, mask = _inputs((4, 6, 5, 5), (1, 6, 1, 1), False, True)
    cases = {
        "non-contiguous": (x.transpose(2, 3), grad.transpose(2, 3), mask),
        "float64": (x.double(), grad.double(), mask.double()),
        "channels block not one run": (x, grad, torch.ones(1, 6, 1, 5)),
    }
    for name, (xi, gi, mi) in cases.items():
        vi, voi, li = (t.to(xi.dtype) for t in (v, vo, level))
        assert torch.equal(nk.forward(xi, vi, voi, li, mi, False), torch_forward(xi, vi, voi, li, mi, False))
        got = nk.backward(gi, xi, vi, voi, li, mi, False, BITS, True)
        assert torch.equal(got[0], torch_backward(gi, xi, vi, voi, li, mi, False, BITS, True)[0]), name
    xg = x.clone().requires_grad_(True)  # autograd records: the torch kernel builds the graph
    assert nk.forward(xg, v, vo, level, mask, False).grad_fn is not None
    assert not ran


def test_a_failure_warns_once_and_falls_back_to_the_torch_kernels(monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("numba: no such lowering")

    monkeypatch.setattr(nk, "_forward_block", broken)
    x, grad, v, vo, level, mask = _inputs((2, 6, 4, 4), (1, 6, 1, 1), True, True)
    fwd, bwd = nk.kernel("forward", torch_forward), nk.kernel("backward", torch_backward)
    for _ in range(2):
        assert torch.equal(fwd(x, v, vo, level, mask, True), torch_forward(x, v, vo, level, mask, True))
    ref = torch_backward(grad, x, v, vo, level, mask, True, BITS, True)
    for r, n in zip(ref, bwd(grad, x, v, vo, level, mask, True, BITS, True)):
        assert torch.equal(r, n)  # the backward too: the torch kernels from the failure on
    err = capsys.readouterr().err
    assert err.count("warning: numba quantiser kernels failed") == 1 and "no such lowering" in err
    assert "Traceback" not in err
    assert not nk.numba_kernels_enabled()
    assert nk.kernel("forward", torch_forward) is torch_forward
