"""From gates to a configuration, and from a configuration to a physically pruned model."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from hwsbs.defaults import DEFAULT_GROUP_SIZE
from hwsbs.errors import ModelError
from hwsbs.quant.channel_bits import current_group_bits, disable_channel_bits
from hwsbs.quant.layers import SBSConv2d, SBSLayerMixin, SBSLinear
from hwsbs.quant.scales import LAYER_SETTINGS

from .config_io import CompressionConfig
from .convert import SearchSpace, set_submodule

__all__ = ["derive_config", "apply_config", "build_compressed_model", "slice_sbs_layer", "slice_batchnorm"]


def derive_config(
    space: SearchSpace,
    model_name: str = "",
    dataset: str = "",
    bits: list[int] | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    batch: int = 1,
) -> CompressionConfig:
    """Read every gate now: open bit gates give the bits, closed channel gates the pruned channels.

    The search itself reports its steady state instead (:mod:`hwsbs.sbs.steady_state`); this is
    the state of the model as it is, e.g. to compare the search model with the pruned one.
    """
    chosen: dict[str, tuple[int | tuple[int, ...], int]] = {}
    for name, layer in space.layers():
        w, a = layer.current_bits()
        searched = layer.channel_bits and layer.mode == "search" and not layer.pinned
        chosen[name] = (current_group_bits(layer) if searched else w, a)
    pruned = {g.producer: space.layer(g.producer).pruned_groups() for g in space.groups}
    return CompressionConfig(
        layers=space.decisions(chosen, pruned),
        model=model_name,
        dataset=dataset,
        bits=list(bits or space.layer(space.layer_names[0]).bits),
        group_size=group_size,
        batch=batch,
    )


def _copy_sbs_state(src: SBSLayerMixin, dst: SBSLayerMixin) -> None:
    for attr in LAYER_SETTINGS:
        setattr(dst, attr, getattr(src, attr))
    dst.prunable = False  # once channels are physically removed, the pruning decision is final
    with torch.no_grad():
        for pname in ("weight_clip", "act_clip", "w_theta", "a_theta", "p_theta"):
            getattr(dst, pname).copy_(getattr(src, pname))
        for bname in ("calibrated", "act_signed", "w_scale", "a_scale", "p_scale", "p_spread", "a_residual_ema"):
            getattr(dst, bname).copy_(getattr(src, bname))


def slice_sbs_layer(layer: SBSLayerMixin, out_idx: list[int] | None, in_idx: list[int] | None) -> SBSConv2d | SBSLinear:
    """A new SBS layer keeping only ``out_idx`` output and ``in_idx`` input channels."""
    w = layer.weight.detach()
    new: SBSConv2d | SBSLinear
    if isinstance(layer, SBSConv2d):
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
        if depthwise:
            idx = out_idx if out_idx is not None else in_idx
            assert idx is not None
            new_w = w[idx]
            cin = cout = groups = len(idx)
        else:
            if layer.groups != 1 and (out_idx is not None or in_idx is not None):
                raise ModelError(f"cannot prune channels of grouped conv with groups={layer.groups}")
            new_w = w if out_idx is None else w[out_idx]
            new_w = new_w if in_idx is None else new_w[:, in_idx]
            cout, cin, groups = new_w.shape[0], new_w.shape[1] * layer.groups, layer.groups
        # A Conv2d's kernel_size, stride, padding, dilation are pairs (typed tuple[int, ...]).
        ref = nn.Conv2d(
            cin,
            cout,
            cast("tuple[int, int]", layer.kernel_size),
            stride=cast("tuple[int, int]", layer.stride),
            padding=cast("str | tuple[int, int]", layer.padding),
            dilation=cast("tuple[int, int]", layer.dilation),
            groups=groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
        new = SBSConv2d.from_module(ref, layer.bits, layer.group_size, layer.max_prune_fraction, layer.tau)
    else:
        new_w = w if out_idx is None else w[out_idx]
        new_w = new_w if in_idx is None else new_w[:, in_idx]
        ref_linear = nn.Linear(new_w.shape[1], new_w.shape[0], bias=layer.bias is not None)
        new = SBSLinear.from_module(ref_linear, layer.bits, layer.group_size, layer.max_prune_fraction, layer.tau)
    with torch.no_grad():
        new.weight.copy_(new_w)
        if layer.bias is not None:
            b = layer.bias.detach()
            new_bias = cast(Tensor, new.bias)  # made with bias=True above
            new_bias.copy_(b if out_idx is None else b[out_idx])
    _copy_sbs_state(layer, new)
    return new.to(layer.weight.device)


def slice_batchnorm(bn: nn.modules.batchnorm._BatchNorm, idx: list[int]) -> nn.Module:
    """A batch-norm keeping only channels ``idx``."""
    new = type(bn)(
        len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats
    )
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:  # so both have their running statistics (typed Optional)
            cast(Tensor, new.running_mean).copy_(cast(Tensor, bn.running_mean)[idx])
            cast(Tensor, new.running_var).copy_(cast(Tensor, bn.running_var)[idx])
            cast(Tensor, new.num_batches_tracked).copy_(cast(Tensor, bn.num_batches_tracked))
    return new.to(bn.weight.device if bn.affine else "cpu")


def check_config_matches(space: SearchSpace, config: CompressionConfig, source: str = "config.yaml") -> None:
    """Raise ModelError when ``config`` was not made for this model."""
    cfg = config.by_name()
    missing = [n for n in space.layer_names if n not in cfg]
    extra = [n for n in cfg if n not in space.shapes]
    if missing or extra:
        detail = (
            f"layers missing from it: {', '.join(missing[:3])}"
            if missing
            else f"unknown layers: {', '.join(extra[:3])}"
        )
        raise ModelError(f"{source} does not match the model ({detail})")
    fields = ("in_channels", "out_channels", "kernel_size", "groups")
    for name in space.layer_names:
        a, b = space.shapes[name], cfg[name].shape
        differing = [f for f in fields if getattr(a, f) != getattr(b, f)]
        if differing:
            detail = ", ".join(f"{f} {getattr(b, f)!r} there but {getattr(a, f)!r} in the model" for f in differing)
            raise ModelError(f"{source}: layer {name} does not match the model: {detail}")


def apply_config(space: SearchSpace, config: CompressionConfig, source: str = "config.yaml") -> nn.Module:
    """Fix every layer's bits and physically remove pruned channels; returns ``space.model``.

    Raises:
        ModelError: the config names other layers or shapes, or prunes a layer that is not prunable.
    """
    check_config_matches(space, config, source)
    cfg = config.by_name()
    model = space.model
    for name, layer in space.layers():
        disable_channel_bits(layer)  # fixed layers: per-row widths below, plain threshold shapes
        layer.set_fixed(cfg[name].w_bits, cfg[name].a_bits)
        layer.prunable = False
        layer.act_float = cfg[name].act_float  # weight-only decisions keep activations float
        if cfg[name].shape.kind != "matmul":
            layer.weight_group = cfg[name].w_group
    producers = {g.producer: g for g in space.groups}
    passthrough = {p for g in space.groups for p in g.passthrough}
    for name in space.layer_names:
        if cfg[name].pruned_channels and name not in producers and name not in passthrough:
            raise ModelError(f"{source}: layer {name} has pruned_channels but is not prunable in this model")
    for producer, group in producers.items():
        pruned = set(cfg[producer].pruned_channels)
        if not pruned:
            continue
        keep = [c for c in range(space.shapes[producer].out_channels) if c not in pruned]
        set_submodule(model, producer, slice_sbs_layer(space.layer(producer), keep, None))
        for bn in group.norms:
            set_submodule(
                model, bn, slice_batchnorm(cast(nn.modules.batchnorm._BatchNorm, model.get_submodule(bn)), keep)
            )
        for dw in group.passthrough:
            set_submodule(model, dw, slice_sbs_layer(space.layer(dw), keep, keep))
        set_submodule(model, group.consumer, slice_sbs_layer(space.layer(group.consumer), None, keep))
    for name, decision in cfg.items():  # channel-wise bits: each kept output row at its group's width
        if decision.group_w_bits:
            size, out = decision.bit_group_size, decision.shape.out_channels
            rows = [decision.group_w_bits[c // size] for c in range(out) if c not in set(decision.pruned_channels)]
            cast(SBSLayerMixin, model.get_submodule(name)).fixed_row_bits = tuple(rows)
    return model


def build_compressed_model(
    model: nn.Module, config: CompressionConfig, example: Tensor, source: str = "config.yaml"
) -> nn.Module:
    """A full-precision model turned into the fixed, physically pruned model ``config`` describes."""
    from .convert import convert_model

    space = convert_model(model, example, config.bits, group_size=config.group_size, prune=True)
    return apply_config(space, config, source)
