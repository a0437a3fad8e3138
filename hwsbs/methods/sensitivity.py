"""Per-layer sensitivity to quantisation and pruning: second-order Taylor with the empirical Fisher.

The scores the integer-program baseline (:mod:`hwsbs.methods.ilp`) minimises; see its module
docstring for the formulas. Everything is computed on a deep copy of the search space's model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from cost_models.base import FLOAT_BITS
from hwsbs.errors import ConfigError
from hwsbs.quant.matmul import SBSMatmul
from hwsbs.sbs.convert import SearchSpace
from hwsbs.task import task_loss

if TYPE_CHECKING:
    from hwsbs.quant.layers import SBSConv2d, SBSLinear

#: Key suffix of a matmul's captured second operand.
SECOND = "#second"

__all__ = ["Sensitivity", "estimate_sensitivity"]

_FP = FLOAT_BITS


@dataclass
class Sensitivity:
    """Second-order loss-increase estimates (see the module docstring)."""

    weight: dict[str, dict[int, float]]  # layer -> weight bits -> S_w
    act: dict[str, dict[int, float]]  # layer -> activation bits -> S_a
    channels: dict[str, list[float]]  # producer -> importance of each output channel

    def groups(self, producer: str, sizes: Sequence[int]) -> list[float]:
        """Importance per pruning group of ``producer`` (groups of ``sizes`` channels)."""
        imp, out, start = self.channels[producer], [], 0
        for size in sizes:
            out.append(float(sum(imp[start : start + size])))
            start += size
        return out


def _capture_inputs(store: dict[str, list[Tensor]], name: str) -> Callable:
    """A pre-hook giving the layer its own copy of the input, one that autograd can differentiate.

    A matmul's second operand is captured too, under ``name + SECOND``: it is what its weight
    gates quantise, so its sensitivity is the matmul's "weight" sensitivity.
    """

    def own(x: Tensor) -> Tensor:
        return x.clone() if x.requires_grad else x.detach().clone().requires_grad_(True)

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = own(args[0])
        store.setdefault(name, []).append(x)
        if isinstance(module, SBSMatmul):
            b = own(args[1])
            store.setdefault(name + SECOND, []).append(b)
            return (x, b, *args[2:])
        return (x, *args[1:])

    return hook


def _channel_sums(t: Tensor, linear: bool) -> Tensor:
    """Sum over everything but the channel dimension (last for Linear, 1 for Conv2d)."""
    dim = t.dim() - 1 if linear else 1
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).sum(1)


@torch.no_grad()
def _add_batch(
    layers: dict[str, SBSConv2d | SBSLinear | SBSMatmul],
    inputs: dict[str, list[Tensor]],
    grads: dict[str, list[Tensor]],
    bits: Sequence[int],
    n: int,
    consumers: dict[str, str],
    act: dict,
    chan: dict,
    act_w: dict,
) -> None:
    """Accumulate one batch's activation sensitivities and channel importances."""
    for name, layer in layers.items():
        if isinstance(layer, SBSMatmul):
            for x, g in zip(inputs.get(name + SECOND, []), grads.get(name + SECOND, [])):
                for b in bits:
                    layer.set_fixed(b, _FP)
                    act_w[name][b] += 0.5 * n * float((g.pow(2) * (layer.quantized_operand(x) - x).pow(2)).sum())
            layer.set_fixed(_FP, _FP)
        for x, g in zip(inputs.get(name, []), grads.get(name, [])):
            g2 = g.pow(2)
            for b in bits:
                layer.set_fixed(_FP, b)
                act[name][b] += 0.5 * n * float((g2 * (layer.quantized_input(x) - x).pow(2)).sum())
            layer.set_fixed(_FP, _FP)
            if name in consumers:
                chan[consumers[name]] += 0.5 * n * _channel_sums((g * x).pow(2), isinstance(layer, nn.Linear))


def _backward(
    model: nn.Module,
    layers: dict[str, SBSConv2d | SBSLinear | SBSMatmul],
    inputs: dict[str, list[Tensor]],
    x: Tensor,
    y: Tensor,
) -> tuple[list[Tensor | None], dict[str, list[Tensor]]]:
    """One batch's CE gradients w.r.t. every layer's weight and every captured layer input."""
    inputs.clear()
    loss = task_loss(model(x), y)
    names = list(inputs)
    flat = [t for n in names for t in inputs[n]]
    weighted = [n for n in layers if not isinstance(layers[n], SBSMatmul)]
    got = torch.autograd.grad(loss, [layers[n].weight for n in weighted] + flat, allow_unused=True)
    rest = iter(got[len(weighted) :])
    grads = {n: [torch.zeros_like(t) if (g := next(rest)) is None else g for t in inputs[n]] for n in names}
    w_grads = dict(zip(weighted, got[: len(weighted)]))
    return [w_grads.get(n) for n in layers], grads


def estimate_sensitivity(
    space: SearchSpace,
    batches: Iterable[tuple[Tensor, Tensor]],
    bits: Sequence[int],
    device: torch.device,
    on_batch: Callable[[], None] | None = None,
) -> Sensitivity:
    """Fisher-Taylor sensitivities of every layer and channel importances of every producer.

    Computed on a deep copy in eval mode (batch-norm running statistics, no dropout), every
    layer at full precision.

    Args:
        space: the converted model (deep-copied; never modified).
        batches: (inputs, labels) training batches.
        bits: candidate bit widths.
        device: where to compute.
        on_batch: called after each batch (progress).

    Raises:
        ConfigError: ``batches`` is empty.
    """
    model = copy.deepcopy(space.model).to(device).eval()
    # the converted model's layers (convert_model wraps every one)
    layers = {n: cast("SBSConv2d | SBSLinear | SBSMatmul", model.get_submodule(n)) for n in space.layer_names}
    for layer in layers.values():
        layer.set_fixed(_FP, _FP)
    consumers = {g.consumer: g.producer for g in space.groups}
    fisher = [None if isinstance(lay, SBSMatmul) else torch.zeros_like(lay.weight) for lay in layers.values()]
    act = {n: {b: 0.0 for b in bits} for n in layers}
    act_w = {n: {b: 0.0 for b in bits} for n, lay in layers.items() if isinstance(lay, SBSMatmul)}
    chan = {g.producer: torch.zeros(space.shapes[g.producer].out_channels, device=device) for g in space.groups}
    inputs: dict[str, list[Tensor]] = {}
    hooks = [lay.register_forward_pre_hook(_capture_inputs(inputs, n)) for n, lay in layers.items()]
    count = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            w_grads, x_grads = _backward(model, layers, inputs, x, y)
            for f, g in zip(fisher, w_grads):
                if f is not None and g is not None:
                    f += len(y) * g.detach().pow(2)
            detached = {n: [t.detach() for t in inputs[n]] for n in x_grads}
            _add_batch(layers, detached, x_grads, bits, len(y), consumers, act, chan, act_w)
            count += 1
            if on_batch is not None:
                on_batch()
    finally:
        for h in hooks:
            h.remove()
    if count == 0:
        raise ConfigError("ilp: no training batch to estimate sensitivities on")
    weight = _weight_sensitivity(
        {n: lay for n, lay in layers.items() if not isinstance(lay, SBSMatmul)},
        {n: f for n, f in zip(layers, fisher) if f is not None},
        bits,
        count,
    )
    weight.update({n: {b: v / count for b, v in d.items()} for n, d in act_w.items()})
    return Sensitivity(
        weight,
        {n: {b: v / count for b, v in d.items()} for n, d in act.items()},
        {p: (c / count).tolist() for p, c in chan.items()},
    )


@torch.no_grad()
def _weight_sensitivity(
    layers: dict[str, SBSConv2d | SBSLinear], fisher: dict[str, Tensor], bits: Sequence[int], count: int
) -> dict:
    out: dict[str, dict[int, float]] = {}
    for name, layer in layers.items():
        f = fisher[name] / count
        out[name] = {}
        for b in bits:
            layer.set_fixed(b, _FP)
            out[name][b] = 0.5 * float((f * (layer.quantized_weight() - layer.weight).pow(2)).sum())
        layer.set_fixed(_FP, _FP)
    return out


# ---------------------------------------------------------------------------------------- the method
