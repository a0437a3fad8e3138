"""The fused quantiser path (issue 16) equals the reference layer code in value and gradient.

Every quantiser family: weights (bit gates, standardised over the kept channels), activations
(bit gates, signed and unsigned inputs, the producer's pruning gates as a channel mask), a
product's two operands; every gate pattern; float32 and float64. In eager mode the fused path
repeats the reference's floating-point operations, so the comparison is exact.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from hwsbs.quant.fused_layers import fused_enabled, fused_quantize, use_fused
from hwsbs.quant.layers import SBSConv2d, SBSLinear
from hwsbs.quant.matmul import SBSMatmul
from hwsbs.quant.numba_kernels import use_numba_kernels
from hwsbs.quant.quantizer import bit_sharing_terms, compose

BITS = (2, 4, 8)


@pytest.fixture(autouse=True)
def _torch_kernels():
    """The torch kernels: they repeat the reference exactly, sums included (the numba kernels sum in
    float64; tests/test_numba_kernels.py checks them against these)."""
    old = use_numba_kernels(False)
    yield
    use_numba_kernels(old)


@pytest.fixture(autouse=True)
def _restore_switch():
    old = fused_enabled()
    yield
    use_fused(old)


def _pair(seed: int, signed: bool, dtype: torch.dtype = torch.float32) -> tuple[SBSConv2d, SBSConv2d, torch.Tensor]:
    """A calibrated prunable producer and its consumer, and an input (negative values if ``signed``)."""
    torch.manual_seed(seed)
    producer = SBSConv2d.from_module(nn.Conv2d(3, 8, 3, padding=1), BITS, 2, 0.5, 1.0).to(dtype)
    consumer = SBSConv2d.from_module(nn.Conv2d(8, 6, 3, padding=1), BITS, 2, 0.5, 1.0).to(dtype)
    producer.prunable = True
    consumer.__dict__["mask_source"] = producer
    x = torch.randn(4, 3, 9, 9, dtype=dtype)
    h = torch.randn(4, 8, 9, 9, dtype=dtype)
    x = x if signed else x.relu()
    h = h if signed else h.relu()
    producer(x)
    consumer(h)  # calibration on the first batch
    return producer, consumer, h


def _grads(layers: list[nn.Module], inp: torch.Tensor, forward, fused: bool, seed: int):
    use_fused(fused)
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    x = inp.clone().requires_grad_(True)
    out = forward(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * upstream).sum().backward()
    grads = {
        f"{i}.{n}": p.grad.clone()
        for i, layer in enumerate(layers)
        for n, p in layer.named_parameters()
        if p.grad is not None
    }
    return out.detach(), x.grad.clone(), grads


def _assert_same(ref, new):
    out_r, gx_r, grads_r = ref
    out_n, gx_n, grads_n = new
    assert torch.equal(out_n, out_r)
    assert torch.equal(gx_n, gx_r)
    assert grads_r.keys() == grads_n.keys()
    for key in grads_r:
        assert torch.equal(grads_n[key], grads_r[key]), key


def _set_thresholds(layer, w_open: tuple[bool, ...], a_open: tuple[bool, ...]) -> None:
    """Thresholds that open (statistic above) or close each bit gate; gradients still flow."""
    with torch.no_grad():
        w_rel = layer.weight_statistics()
        a_rel = layer.a_residual_ema / layer.a_scale
        layer.w_theta.copy_(torch.where(torch.tensor(w_open), w_rel - 0.3, w_rel + 0.3))
        layer.a_theta.copy_(torch.where(torch.tensor(a_open), a_rel - 0.3, a_rel + 0.3))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_pair_weights_activations_and_pruning_gates_match(signed, dtype):
    producer, consumer, h = _pair(0, signed, dtype)
    with torch.no_grad():  # a pruning threshold between the groups: some pruned, some kept
        producer.p_theta.copy_(producer.pruning_statistics().median())
    for w_open, a_open in itertools.product(itertools.product([False, True], repeat=2), repeat=2):
        _set_thresholds(consumer, w_open, a_open)
        ema = consumer.a_residual_ema.clone()
        ref = _grads([producer, consumer], h, consumer, False, 1)
        ema_ref = consumer.a_residual_ema.clone()
        consumer.a_residual_ema.copy_(ema)  # the reference's step moved the running statistic
        new = _grads([producer, consumer], h, consumer, True, 1)
        assert torch.equal(consumer.a_residual_ema, ema_ref)
        _assert_same(ref, new)
        assert producer.p_theta.grad is not None and producer.p_theta.grad.abs().sum() > 0


def test_gates_and_statistics_recorded_for_the_cost_term_match():
    producer, consumer, h = _pair(1, False)
    recorded = {}
    for fused in (False, True):
        use_fused(fused)
        ema = consumer.a_residual_ema.clone()
        consumer(h)
        recorded[fused] = [getattr(consumer, k).detach().clone() for k in ("last_w_gates", "last_a_gates")]
        recorded[fused] += [getattr(consumer, k).clone() for k in ("last_w_probs", "last_a_probs", "a_residual_ema")]
        recorded[fused].append(producer.last_p_gates.detach().clone())
        consumer.a_residual_ema.copy_(ema)
    for a, b in zip(recorded[False], recorded[True]):
        assert torch.equal(a, b)


def test_eval_mode_uses_the_running_statistic_in_both_paths():
    _, consumer, h = _pair(2, True)
    consumer.eval()
    outs = []
    for fused in (False, True):
        use_fused(fused)
        with torch.no_grad():
            outs.append(consumer(h))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("signed", [False, True])
def test_linear_layer_matches(signed):
    torch.manual_seed(3)
    layer = SBSLinear.from_module(nn.Linear(16, 5), BITS, 2, 0.5, 1.0)
    x = torch.randn(7, 16)
    x = x if signed else x.relu()
    layer(x)
    _assert_same(_grads([layer], x, layer, False, 2), _grads([layer], x, layer, True, 2))


def test_matmul_operands_match():
    torch.manual_seed(4)
    mm = SBSMatmul(BITS, 1, 0.0, 1.0)
    a, b = torch.randn(2, 5, 8), torch.randn(2, 8, 3).relu()
    mm(a, b)

    def forward(x):
        return mm(x, b * 1.5)

    _assert_same(_grads([mm], a, forward, False, 3), _grads([mm], a, forward, True, 3))

    def transposed(x):  # the second operand a transposed view, as attention's K^T
        return mm(x, x.transpose(-2, -1).relu())

    mm.w_theta.data.fill_(0.0)
    ref, new = _grads([mm], a, transposed, False, 4), _grads([mm], a, transposed, True, 4)
    for r, n in zip((ref[0], ref[1], *ref[2].values()), (new[0], new[1], *new[2].values())):
        assert torch.allclose(n, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("signed", [False, True])
def test_fused_function_matches_the_bit_sharing_decomposition(signed):
    """Against :func:`compose` of :func:`bit_sharing_terms` itself, for every gate pattern (float64)."""
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(3000, generator=gen, dtype=torch.float64) * 1.4
    x0 = x0 if signed else x0.relu()
    upstream = torch.randn(3000, generator=gen, dtype=torch.float64)
    for pattern in itertools.product([0.0, 1.0], repeat=len(BITS) - 1):
        results = []
        for fused in (False, True):
            x = x0.clone().requires_grad_(True)
            v = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
            gates = torch.tensor(pattern, dtype=torch.float64, requires_grad=True)
            if fused:
                out = fused_quantize(x, v, v, gates, BITS, signed)
            else:
                t = x / v
                z = (torch.clamp(t, -1.0, 1.0) + 1.0) / 2.0 if signed else torch.clamp(t, 0.0, 1.0)
                z_hat = compose(bit_sharing_terms(z, BITS)[0], list(gates.unbind()))
                out = v * (2.0 * z_hat - 1.0) if signed else v * z_hat
            (out * upstream).sum().backward()
            results.append((out.detach(), x.grad, v.grad, gates.grad))
        for ref, new in zip(*results):
            assert torch.allclose(new, ref, rtol=1e-9, atol=1e-9), pattern


def test_switch_selects_the_reference_path():
    _, consumer, h = _pair(6, False)
    use_fused(False)
    assert "FusedQuantize" not in type(consumer.quantized_input(h).grad_fn).__name__
    assert "FusedQuantize" not in type(consumer.quantized_weight().grad_fn).__name__
    use_fused(True)
    assert "FusedQuantize" in type(consumer.quantized_input(h).grad_fn).__name__
    assert "FusedQuantize" in type(consumer.quantized_weight().grad_fn).__name__


def test_cached_pruning_statistics_and_masks_follow_every_write():
    """Pruning statistics and kept-channel masks are cached between weight updates; any in-place
    write to the weight, the calibration buffers or the threshold must recompute them."""
    producer, _, _ = _pair(7, False)

    def fresh_stats():
        norms = producer._group_norms(producer._standardise(producer.weight)[0])
        return (norms / producer.p_scale - 1.0) / producer.p_spread

    assert producer.pruning_statistics() is producer.pruning_statistics()
    with torch.no_grad():
        producer.weight.mul_(torch.linspace(0.5, 1.5, producer.weight.shape[0]).view(-1, 1, 1, 1))
    assert torch.equal(producer.pruning_statistics(), fresh_stats())
    producer.p_spread.fill_(2.0)
    assert torch.equal(producer.pruning_statistics(), fresh_stats())
    with torch.no_grad():
        producer.p_theta.fill_(float(fresh_stats().max()) + 1.0)  # every group pruned...
    assert producer.kept_channel_mask().sum() == 0
    with torch.no_grad():
        producer.p_theta.fill_(float(fresh_stats().min()) - 1.0)  # ...and every group kept
    assert producer.kept_channel_mask().sum() == producer.weight.shape[0]
    producer.load_state_dict({k: v * 1.01 if k == "weight" else v for k, v in producer.state_dict().items()})
    assert torch.equal(producer.pruning_statistics(), fresh_stats())
