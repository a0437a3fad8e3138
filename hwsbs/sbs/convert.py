"""Turn any nn.Module into a searchable one: wrap every Conv2d/Linear/attention product, trace
shapes, mark pruning."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from cost_models.base import LayerShape
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION, DEFAULT_PIN_BITS
from hwsbs.errors import ModelError
from hwsbs.quant.layers import SBSConv2d, SBSLayerMixin, SBSLinear
from hwsbs.quant.matmul import Matmul, SBSMatmul

from .adapters import adapt_layers
from .attention import expose_attention
from .channel_config import collapse_group_bits
from .config_io import LayerDecision, uniform_decision
from .coverage import Coverage, measure_coverage
from .prunable import PrunableGroup, find_prunable_groups, warn_untraceable

__all__ = ["SearchSpace", "convert_model", "searchable_shapes", "set_submodule", "trace_layer_shapes"]

#: The module types conversion wraps (adapters and attention exposure produce these).
_SEARCHED_TYPES = (nn.Conv2d, nn.Linear, Matmul)


@dataclass
class SearchSpace:
    """A converted model and what the search needs to know about it."""

    model: nn.Module  # the model with SBS layers in place of Conv2d/Linear
    layer_names: list[str]  # SBS layers in execution order
    shapes: dict[str, LayerShape]  # each layer's unpruned shape, traced with a sample batch
    groups: list[PrunableGroup] = field(default_factory=list)  # prunable producer/consumer chains
    pruning_disabled_reason: str | None = None  # why pruning is off, when it is
    coverage: Coverage | None = None  # the share of the model's MACs these layers compute

    def layer(self, name: str) -> SBSLayerMixin:
        return cast(SBSLayerMixin, self.model.get_submodule(name))  # layer_names are SBS layers

    def layers(self) -> list[tuple[str, SBSLayerMixin]]:
        return [(n, self.layer(n)) for n in self.layer_names]

    def pruned_channels(self, producer: str, groups: Sequence[int]) -> list[int]:
        """The output channel indices of ``producer``'s pruning ``groups``."""
        size = self.layer(producer).group_size
        out = self.shapes[producer].out_channels
        return [c for g in sorted(groups) for c in range(g * size, min((g + 1) * size, out))]

    def decisions(
        self, bits: Mapping[str, tuple[int | tuple[int, ...], int]], pruned_groups: Mapping[str, Sequence[int]]
    ) -> list[LayerDecision]:
        """Every layer's decision from per-layer bits and per-producer pruned groups.

        The one home of the channel-coupling rule: a consumer's kept inputs are its producer's
        kept outputs, and a depthwise layer on the way loses the producer's channels, in and out.
        Pinned layers, and layers missing from ``bits``, keep their fixed bits. A tuple of weight
        bits is one width per output-channel group (``--granularity channel``).
        """
        # by producer; a layer with no source looks up None and finds nothing pruned
        pruned: dict[str | None, list[int]] = {p: self.pruned_channels(p, gs) for p, gs in pruned_groups.items()}
        source = self.kept_in_source()
        passthrough = {p for g in self.groups for p in g.passthrough}
        out = []
        for name, layer in self.layers():
            shape = self.shapes[name]
            fixed = (layer.fixed_w_bits, layer.fixed_a_bits)
            w, a = fixed if layer.pinned else bits.get(name, fixed)
            if layer.act_float:  # weight-only: activations stay at their float width whatever is asked
                a = layer.fixed_a_bits
            src = source.get(name)
            kept_in = shape.in_channels - len(pruned.get(src, [])) if src is not None else None
            own = pruned.get(src, []) if name in passthrough else pruned.get(name, [])
            groups: tuple[int, ...] = ()
            if isinstance(w, tuple):  # channel-wise: a plain decision when every kept channel shares a width
                w, groups = collapse_group_bits(w, layer.group_size, shape.out_channels, own)
            decision = LayerDecision(shape, int(w), int(a), list(own), kept_in, layer.weight_group, layer.act_float)
            if groups:
                decision.group_w_bits, decision.bit_group_size = groups, layer.group_size
            out.append(decision)
        return out

    def uniform(self, bits: int) -> list[LayerDecision]:
        """Every layer at ``bits``, pinned ones too, unpruned: the reference "uniform ``bits``-bit".

        Weight-only layers keep their activations at their float width (attention products both
        operands), as :meth:`CompressionConfig.uniform` does.
        """
        return [uniform_decision(d, bits) for d in self.decisions({}, {})]

    def max_pruned_groups(self, producer: str) -> int:
        """Groups ``producer`` may lose (its layer's pruning cap)."""
        return self.layer(producer).max_pruned_groups

    def kept_in_source(self) -> dict[str, str]:
        """For each layer whose input channels follow a producer's pruning: that producer."""
        out: dict[str, str] = {}
        for g in self.groups:
            out[g.consumer] = g.producer
            for p in g.passthrough:
                out[p] = g.producer
        return out


def _set_weight_only(layer: SBSLayerMixin, name: str, act_bits: int | None, weight_group: int) -> None:
    """Weight-only quantisation: float activations, and attention products entirely in float."""
    if weight_group < 0:
        raise ModelError(f"weight group must be 0 (one clip per layer) or a positive size, got {weight_group}")
    if not isinstance(layer, SBSMatmul):
        layer.weight_group = weight_group
    if act_bits is None:
        return
    layer.act_float = True
    layer.fixed_a_bits = act_bits
    if isinstance(layer, SBSMatmul):
        layer.pinned = True
        layer.fixed_w_bits = act_bits


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


@torch.no_grad()
def trace_layer_shapes(model: nn.Module, example: Tensor) -> tuple[list[str], dict[str, LayerShape]]:
    """Run ``example`` once (eval mode) and record every Conv2d/Linear/Matmul's shape in execution order."""
    order: list[str] = []
    shapes: dict[str, LayerShape] = {}
    hooks = []

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if name in shapes:
                return  # shared module called twice: first call defines the shape
            x = inputs[0]
            if isinstance(mod, Matmul):  # (..., M, K) x (..., K, N); the leading dims after batch are heads
                heads = int(x[0, ..., 0, 0].numel()) if x.dim() > 2 else 1
                rows, reduction, cols = int(x.shape[-2]), int(x.shape[-1]), int(inputs[1].shape[-1])
                shapes[name] = LayerShape(
                    name=name,
                    kind="matmul",
                    in_channels=reduction,
                    out_channels=cols,
                    in_size=(rows, heads),
                    out_size=(rows, heads),
                )
            elif isinstance(mod, nn.Conv2d):
                shapes[name] = LayerShape(
                    name=name,
                    kind="conv",
                    in_channels=mod.in_channels,
                    out_channels=mod.out_channels,
                    kernel_size=cast("tuple[int, int]", tuple(mod.kernel_size)),  # Conv2d: pairs
                    stride=cast("tuple[int, int]", tuple(mod.stride)),
                    groups=mod.groups,
                    in_size=(int(x.shape[-2]), int(x.shape[-1])),
                    out_size=(int(output.shape[-2]), int(output.shape[-1])),
                )
            else:
                linear = cast(nn.Linear, mod)  # the hook is registered on Conv2d and Linear only
                positions = int(x[..., 0].numel() // x.shape[0]) if x.dim() > 1 else 1
                shapes[name] = LayerShape(
                    name=name,
                    kind="linear",
                    in_channels=linear.in_features,
                    out_channels=linear.out_features,
                    out_size=(max(positions, 1), 1),
                    in_size=(max(positions, 1), 1),
                )
            order.append(name)

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, _SEARCHED_TYPES):
            hooks.append(mod.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(example)
    except Exception as exc:
        raise ModelError(f"the model failed on a sample batch of shape {tuple(example.shape)}: {exc}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order, shapes


def searchable_shapes(model: nn.Module, example: Tensor) -> tuple[list[str], dict[str, LayerShape]]:
    """The layers conversion would search, in execution order, without converting ``model``
    (a copy gets its adapters and exposed attention, so products and Conv1D are listed too)."""
    prepared = copy.deepcopy(model)
    adapt_layers(prepared)
    expose_attention(prepared, example)
    return trace_layer_shapes(prepared, example)


@torch.no_grad()
def _calibrate(model: nn.Module, example: Tensor) -> None:
    """One forward in training mode initialises clipping values and gate statistic scales.

    Training mode, because that is what the search sees: in eval mode the batch-norms of an
    untrained model do not normalise, activations shrink layer after layer, and the clipping
    values calibrated there would clip nearly everything once training starts. Batch-norm running
    statistics are restored afterwards, so calibration leaves no trace.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    model.train()
    model(example)
    for m, state in zip(norms, saved):
        m.load_state_dict(state)


def convert_model(
    model: nn.Module,
    example: Tensor,
    bits: Sequence[int] = DEFAULT_BITS,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION,
    temperature: float = 1.0,
    pin_first_last: bool = True,
    pin_bits: int = DEFAULT_PIN_BITS,
    prune: bool = True,
    inplace: bool = False,
    weight_only_act_bits: int | None = None,
    weight_group: int = 0,
) -> SearchSpace:
    """Wrap every Conv2d/Linear of ``model`` in an SBS layer and calibrate it on ``example``.

    Args:
        model: any nn.Module; never modified unless ``inplace``.
        example: a representative input batch (used to trace shapes and calibrate clipping).
        bits: candidate bit widths (doubling).
        group_size: output channels per pruning gate.
        max_prune_fraction: at most this share of a layer's groups can be pruned.
        temperature: gate surrogate temperature.
        pin_first_last: keep the first and last layers at ``pin_bits`` (method section 4).
        pin_bits: bit width of pinned layers (32 keeps them in float).
        prune: search pruning for the prunable pairs torch.fx finds.
        inplace: convert ``model`` itself instead of a deep copy.
        weight_only_act_bits: weight-only search: activations stay float and are priced at this
            width (16 or 32); attention products stay float entirely (None: quantise activations).
        weight_group: weights per scale along the input dimension (0: one learned clip per layer).

    Returns:
        The :class:`SearchSpace`. Models fx cannot trace get no pruning and a warning saying why.
    """
    if not inplace:
        model = copy.deepcopy(model)
    adapt_layers(model)
    groups: list[PrunableGroup] = []
    reason: str | None = None
    if prune:  # before attention is exposed: torch.fx traces nn.MultiheadAttention as one leaf
        groups, reason = find_prunable_groups(model)
    expose_attention(model, example)
    order, shapes = trace_layer_shapes(model, example)
    coverage = measure_coverage(model, example, shapes)
    if not order:
        raise ModelError(f"{type(model).__name__} has no layer hwsbs can quantise{coverage.describe_float()}")
    if reason is not None:
        warn_untraceable(reason)
    unused = [n for n, m in model.named_modules() if isinstance(m, _SEARCHED_TYPES) and n not in shapes]
    for name in order + unused:
        mod = model.get_submodule(name)
        cls = SBSMatmul if isinstance(mod, Matmul) else SBSConv2d if isinstance(mod, nn.Conv2d) else SBSLinear
        set_submodule(
            model,
            name,
            cls.from_module(mod, bits, group_size, max_prune_fraction, temperature),  # type: ignore[arg-type]  # cls matches mod's type
        )
    pinned = {order[0], order[-1]} if pin_first_last else set()
    producers = {g.producer for g in groups}
    groups = [g for g in groups if g.producer not in pinned]  # a pinned layer keeps its channels
    producers = {g.producer for g in groups}
    for name in order:
        layer = cast(SBSLayerMixin, model.get_submodule(name))  # converted above
        if name in pinned:
            layer.pinned = True
            layer.fixed_w_bits = layer.fixed_a_bits = pin_bits
        layer.prunable = name in producers
        _set_weight_only(layer, name, weight_only_act_bits, weight_group)
    for g in groups:  # the consumer zeroes the channels its producer prunes (method section 3)
        producer = model.get_submodule(g.producer)
        model.get_submodule(g.consumer).__dict__["mask_source"] = producer
        for dw in g.passthrough:  # a depthwise layer in between loses the same rows
            model.get_submodule(dw).__dict__["row_source"] = producer
    _calibrate(model, example)
    space = SearchSpace(model=model, layer_names=order, shapes=shapes, groups=groups, pruning_disabled_reason=reason)
    space.coverage = coverage
    return space
