"""Quantised Conv2d / Linear with SBS gates (method sections 1-3).

A layer is in one of two modes:
* ``search``: every candidate bit width lives in one weight tensor (bit sharing); binary gates
  with learnable thresholds pick the weight and activation bits, and (for prunable layers) one
  gate per group of output channels is the 0-bit option.
* ``fixed``: a given (w_bits, a_bits), 32 meaning float; used for fine-tuning and baselines.

Thresholds are learned in normalised units *(hwsbs)*, so one learning rate and temperature suit
every gate: a bit gate's statistic is its residual divided by its value at calibration (starts at
1, threshold at 0), and a pruning gate's statistic is the group's mean |w| standardised over the
layer's groups at calibration (``(m_c / mean - 1) / spread``, spread ~N(0, 1), so groups are
``tau``-separated and cross the threshold one after another, not all on one step). The surrogate
is the paper's formula in those units: ``dg/dtheta = -sigma'((A - theta)/tau)/tau``.

Pruning gates act where the loss sees them *(hwsbs, method section 3)*: the producer computes its
group gates, and the consumer multiplies the channels it reads (after the producer's batch-norm
and activation, and any depthwise layers between) by them. A pruned channel is exactly zero, so
the search model computes what the physically pruned model computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cost_models.base import FLOAT_BITS
from hwsbs.distributed import mean_over_ranks

from . import channel_bits as cb  # --granularity channel: weight gates per output-channel group
from .channel_gates import ChannelGateMixin
from .fused import gated_quantize, lower_grid_residuals, sampled_residuals
from .fused_layers import fused_activation, fused_input, fused_weight
from .gates import bits_from_gates, threshold_gate
from .quantizer import quantize, step_size
from .scales import EPS, INPUT_PATH, MIN_CLIP, ActivationPath, grad_scale, group_absmax, standardise
from .weight_stats import CACHE as WEIGHT_CACHE
from .weight_stats import clamp_layer, searched_weight

__all__ = ["SBSLayerMixin", "SBSConv2d", "SBSLinear", "sbs_layers"]

_EMA_MOMENTUM = 0.1  # running mean of per-batch activation residuals (method section 2)

#: Attributes only the latest forward's cost term (or the next forward: weight_stats) reads
#: (autograd graph nodes, never copied).
TRANSIENT = ("last_w_gates", "last_a_gates", "last_p_gates", "last_w_probs", "last_a_probs", WEIGHT_CACHE)


class SBSLayerMixin(ChannelGateMixin):
    """State and forward logic shared by :class:`SBSConv2d` and :class:`SBSLinear`."""

    weight: Tensor
    bias: Tensor | None
    out_features_or_channels: int
    # Buffers registered in _init_sbs, and the nn.Module half of the mixin (declarations only).
    calibrated: Tensor
    act_signed: Tensor
    w_scale: Tensor
    a_scale: Tensor
    a_residual_ema: Tensor
    training: bool

    if TYPE_CHECKING:  # provided by nn.Module, the other base of every SBS layer

        def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None: ...

    def _init_sbs(self, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float) -> None:
        k = len(bits)
        self.bits: tuple[int, ...] = tuple(bits)  # candidate bit widths, doubling
        self.group_size = int(group_size)  # output channels per pruning gate
        self.max_prune_fraction = float(max_prune_fraction)  # cap on pruned groups
        self.tau = float(tau)  # surrogate temperature
        self.mode = "search"  # "search" or "fixed"
        self.fixed_w_bits = bits[-1]  # used in fixed mode, or when pinned
        self.fixed_a_bits = bits[-1]
        self.pinned = False  # first/last layers: fixed bits even while searching
        self.prunable = False  # set by conversion for producers of a prunable pair
        self.search_weight_bits = True  # False pins weight gates (e.g. multipath baselines reuse)
        self.act_float = False  # weight-only: activations are not quantised (priced at fixed_a_bits)
        self.channel_bits = False  # weight gates per output-channel group (--granularity channel)
        self.fixed_row_bits: tuple[int, ...] = ()  # fixed mode: one weight width per output row (or ())
        self.weight_group = 0  # weights per scale along the input dimension (0: one learned clip)
        self.weight_clip = nn.Parameter(torch.tensor(3.0))  # v_w, on standardised weights
        self.act_clip = nn.Parameter(torch.tensor(1.0))  # v_x, calibrated on the first batch
        self.w_theta = nn.Parameter(torch.zeros(k - 1))  # weight gate thresholds (relative units)
        self.a_theta = nn.Parameter(torch.zeros(k - 1))  # activation gate thresholds
        self.p_theta = nn.Parameter(torch.zeros(()))  # pruning threshold (relative units)
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("act_signed", torch.tensor(False))  # inputs can be negative
        self.register_buffer("w_scale", torch.ones(k - 1))  # weight residual norms at calibration
        self.register_buffer("a_scale", torch.ones(k - 1))  # activation residual norms at calibration
        self.register_buffer("p_scale", torch.ones(()))  # mean group |w| at calibration
        self.register_buffer("p_spread", torch.ones(()))  # std of group |w| / p_scale at calibration
        self.register_buffer("a_residual_ema", torch.zeros(k - 1))  # running activation residuals
        # Gates of the latest forward, read by the cost term (differentiable w.r.t. thresholds).
        self.last_w_gates: Tensor | None = None  # one 0/1 gate per bit width above the lowest
        self.last_a_gates: Tensor | None = None
        self.last_p_gates: Tensor | None = None
        # Surrogate probabilities sigma((A - theta)/tau) of the latest gates (detached), for the
        # cost term's expected flip differences where the cost is flat at the hard state.
        self.last_w_probs: Tensor | None = None
        self.last_a_probs: Tensor | None = None
        # The producer whose pruning gates mask this layer's input channels, and the one whose
        # gates remove its output rows (itself when prunable; the producer for a depthwise layer
        # in between). Not submodules: kept out of state_dict and named_modules. Set by conversion.
        self.__dict__["mask_source"] = None
        self.__dict__["row_source"] = None

    def _adopt(
        self, source: nn.Module, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float
    ) -> Any:
        """Initialise the SBS state and take ``source``'s weights (``from_module``'s shared part)."""
        self._init_sbs(bits, group_size, max_prune_fraction, tau)
        source_weight = cast(Tensor, source.weight)  # Conv2d / Linear: a weight parameter
        source_bias = cast("Tensor | None", source.bias)
        with torch.no_grad():
            self.weight.copy_(source_weight)
            if source_bias is not None and self.bias is not None:
                self.bias.copy_(source_bias)
        return self.to(source_weight.device)  # type: ignore[attr-defined]  # the nn.Module half

    def __getstate__(self) -> dict[str, Any]:
        """The layer's state for copies and pickles, without the latest forward's gates (non-leaf
        graph tensors ``copy.deepcopy`` refuses; the next forward sets them again)."""
        state = dict(self.__dict__)
        for key in TRANSIENT:
            state[key] = None
        return state

    # ---------------------------------------------------------------- calibration
    @torch.no_grad()
    def _calibrate(self, x: Tensor) -> None:
        """Initialise clipping values and statistic scales from the first batch."""
        w_std = self._standardise(self.weight)[0]
        self.weight_clip.fill_(max(float(w_std.abs().max()), MIN_CLIP))
        signed = bool(x.min() < 0)
        self.act_signed.fill_(signed)
        flat = x.detach().abs().flatten().float()
        if flat.numel() > 200_000:  # a quantile of a sample is enough, and kthvalue is O(n)
            flat = flat[torch.randperm(flat.numel(), device=flat.device)[:200_000]]
        clip = float(torch.quantile(flat, 0.999)) if flat.numel() > 1 else float(flat.max())
        self.act_clip.fill_(max(clip, MIN_CLIP))
        w_stats = cb.weight_residuals(self, self._normalise_weight(w_std))
        a_stats = sampled_residuals(self._normalise_act(x, self.act_clip), self.bits)
        self.w_scale.copy_(w_stats.clamp_min(EPS))
        self.a_scale.copy_(a_stats.clamp_min(EPS))
        self.a_residual_ema.copy_(a_stats.clamp_min(EPS))
        norms = self._group_norms(w_std)
        self.p_scale.fill_(max(float(norms.mean()), EPS))
        spread = float((norms / self.p_scale).std()) if norms.numel() > 1 else 1.0
        self.p_spread.fill_(max(spread, 1e-3))
        # Every group starts kept, the threshold one temperature below the weakest group.
        self.p_theta.fill_(float(self.pruning_statistics().min()) - self.tau)
        self.calibrated.fill_(True)

    # ---------------------------------------------------------------- normalisation
    _standardise = staticmethod(standardise)

    def _search_standardised(self) -> tuple[Tensor, Tensor]:
        return self._standardise(self.weight, self._kept_weight_mask())

    def _weight_clip(self) -> Tensor:
        return grad_scale(self.weight_clip, 1.0 / math.sqrt(self.weight.numel() * (2 ** self.bits[-1] - 1)))

    def _act_clip(self, x: Tensor, clip: Tensor | None = None) -> Tensor:
        per_sample = max(math.prod(x.shape[1:]), 1) if x.dim() > 1 else x.numel()  # x[0].numel(), no op
        clip = self.act_clip if clip is None else clip
        return grad_scale(clip, 1.0 / math.sqrt(per_sample * (2 ** self.bits[-1] - 1)))

    def _weight_range(self, w_std: Tensor) -> Tensor:
        """What a standardised weight is clipped to: the learned clip, or with ``weight_group``
        its group's largest |w| (one FP16 scale per output row and ``weight_group`` inputs)."""
        if self.weight_group <= 0:
            return self._weight_clip()
        return group_absmax(w_std, self.weight_group)

    def _normalise_weight(self, w_std: Tensor, v: Tensor | None = None) -> Tensor:
        v = self._weight_range(w_std) if v is None else v
        return (torch.clamp(w_std / v, -1.0, 1.0) + 1.0) / 2.0

    def weight_statistics(self) -> Tensor:
        """The weight gates' statistics in their units (residual over its calibration value)."""
        if self.channel_bits or self.weight_group > 0:
            return cb.relative_statistics(self, self._normalise_weight(self._search_standardised()[0]))
        return searched_weight(self).rel  # cached until the weight changes (weight_stats)

    def _normalise_act(self, x: Tensor, v: Tensor, signed_flag: str = "act_signed") -> Tensor:
        if self._host_flag(signed_flag):
            return (torch.clamp(x / v, -1.0, 1.0) + 1.0) / 2.0
        return torch.clamp(x / v, 0.0, 1.0)

    def _denormalise_act(self, z: Tensor, v: Tensor, signed_flag: str = "act_signed") -> Tensor:
        if self._host_flag(signed_flag):
            return v * (2.0 * z - 1.0)
        return v * z

    # ---------------------------------------------------------------- quantisers
    def quantized_weight(self) -> Tensor:
        """The weight the layer computes with in its current mode."""
        if (fused := fused_weight(self)) is not None:  # search mode: one autograd node (fused_layers)
            return fused
        searching = self.mode == "search" and not self.pinned
        w_bits = self.fixed_w_bits
        if not searching and w_bits >= FLOAT_BITS:
            return self.weight
        w_std, std = self._search_standardised() if self.mode == "search" else self._standardise(self.weight)
        v = self._weight_range(w_std)
        z = self._normalise_weight(w_std, v)
        if searching and self.search_weight_bits and self.channel_bits:  # a width per channel group
            z_hat = cb.channel_gated_weight(self, z)
        elif searching and self.search_weight_bits:
            stats, grids = lower_grid_residuals(z, self.bits)
            rel = stats / self.w_scale
            gates = threshold_gate(rel, self.w_theta, self.tau)
            self.last_w_gates = gates
            self.last_w_probs = torch.sigmoid((rel - self.w_theta.detach()) / self.tau)
            z_hat = gated_quantize(z, gates, self.bits, grids)
        else:
            z_hat = cb.fixed_weight_grid(self, z, w_bits)
        return std * v * (2.0 * z_hat - 1.0)

    def quantized_input(self, x: Tensor) -> Tensor:
        """The input activation as the layer sees it in its current mode (pruned channels zero)."""
        if (fused := fused_input(self, x, INPUT_PATH, _EMA_MOMENTUM)) is not None:
            return fused
        return self._mask_input(self._quantize_input(x))

    def _quantize_input(self, x: Tensor) -> Tensor:
        return self._quantize_activation(x, INPUT_PATH)

    def _quantize_activation(self, x: Tensor, path: ActivationPath) -> Tensor:
        """Quantise an activation on one path's clip, statistics and gates (method section 2)."""
        if (fused := fused_activation(self, x, path, _EMA_MOMENTUM)) is not None:
            return fused
        searching = self.mode == "search" and not self.pinned
        fixed_bits = self.fixed_a_bits if path.family == "a" else self.fixed_w_bits
        if self.act_float or (not searching and fixed_bits >= FLOAT_BITS):
            return x
        v = self._act_clip(x, getattr(self, path.clip))
        z = self._normalise_act(x, v, path.signed)
        if searching:
            ema: Tensor = getattr(self, path.ema)
            if self.training:  # the statistic on a fixed sample; only the chosen grid is computed in full
                batch_stats = mean_over_ranks(sampled_residuals(z, self.bits))  # torchrun: identical gates
                with torch.no_grad():
                    ema.lerp_(batch_stats, _EMA_MOMENTUM)
            else:
                batch_stats = ema
            theta: Tensor = getattr(self, f"{path.family}_theta")
            rel = batch_stats / getattr(self, path.scale)
            gates = threshold_gate(rel, theta, self.tau)
            setattr(self, f"last_{path.family}_gates", gates)
            setattr(self, f"last_{path.family}_probs", torch.sigmoid((rel - theta.detach()) / self.tau))
            z_hat = gated_quantize(z, gates, self.bits)
        else:
            z_hat = quantize(z, step_size(fixed_bits))
        out = self._denormalise_act(z_hat, v, path.signed)
        probe = self.__dict__.get("curvature_probe")  # set by the search's curvature term (--curvature)
        if probe is not None and searching and self.training:
            probe(self, path.family, z, (2.0 if self._host_flag(path.signed) else 1.0) * v, out)
        return out

    def _maybe_calibrate(self, x: Tensor) -> None:
        if not self._host_flag("calibrated"):
            self._calibrate(x)

    def _host_flag(self, name: str) -> bool:
        """A boolean buffer's value, read from the device only when the buffer has changed.

        ``bool(buffer)`` on a GPU waits for every queued kernel; doing it in each layer's forward
        serialises the host and the device. Any in-place write (``fill_``, ``load_state_dict``)
        bumps the tensor's version counter and a new tensor has a new id, so the cache is exact.
        """
        t = getattr(self, name)
        key = (id(t), t._version)
        cache = self.__dict__.setdefault("_host_flags", {})
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, bool(t))
            cache[name] = hit
        return hit[1]

    # ---------------------------------------------------------------- decisions
    @torch.no_grad()
    def current_bits(self) -> tuple[int, int]:
        """(w_bits, a_bits) the gates select now (activation choice from the running mean)."""
        if self.mode != "search" or self.pinned:
            return self.fixed_w_bits, self.fixed_a_bits
        if self.search_weight_bits and self.channel_bits:  # the layer runs at its widest group
            w_bits = max(cb.current_group_bits(self))
        elif self.search_weight_bits:
            w_rel = self.weight_statistics().tolist()
            w_bits = bits_from_gates(self.bits, [a > float(t) for a, t in zip(w_rel, self.w_theta)])
        else:
            w_bits = self.fixed_w_bits
        if self.act_float:
            return w_bits, self.fixed_a_bits
        a_rel = (self.a_residual_ema / self.a_scale).tolist()
        a_bits = bits_from_gates(self.bits, [a > float(t) for a, t in zip(a_rel, self.a_theta)])
        return w_bits, a_bits

    def clamp_parameters(self) -> None:
        """Keep thresholds >= 0 and within reach of their statistics, clipping values > 0, and
        pruning under its cap (method 2-3; :func:`hwsbs.quant.weight_stats.clamp_layer`)."""
        clamp_layer(self)

    def set_fixed(self, w_bits: int, a_bits: int) -> None:
        """Switch to fixed mode with the given bit widths (32 = float)."""
        self.mode = "fixed"
        self.fixed_row_bits = ()
        self.fixed_w_bits = int(w_bits)
        self.fixed_a_bits = int(a_bits)

    def threshold_parameters(self) -> dict[str, nn.Parameter]:
        """Thresholds by gate kind: ``w`` (weight bits), ``p`` (pruning), ``a`` (activation bits)."""
        return {"w": self.w_theta, "p": self.p_theta, "a": self.a_theta}

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]  # nn.Module's, the other base of the mixin
        state: dict[str, Any] = {"mode": self.mode, "bits": self.bits}
        if self.pinned or self.mode == "fixed":
            state["w/a"] = f"{self.fixed_w_bits}/{self.fixed_a_bits}"
        if self.prunable:
            state["prunable"] = True
        return base + ", " + ", ".join(f"{k}={v}" for k, v in state.items())


class SBSConv2d(SBSLayerMixin, nn.Conv2d):
    """A Conv2d (grouped and depthwise included) with SBS quantisation of weights and inputs."""

    @classmethod
    def from_module(
        cls, conv: nn.Conv2d, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float
    ) -> SBSConv2d:
        # A Conv2d's kernel_size, stride, padding, dilation are pairs (typed tuple[int, ...]).
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            cast("tuple[int, int]", conv.kernel_size),
            stride=cast("tuple[int, int]", conv.stride),
            padding=cast("str | tuple[int, int]", conv.padding),
            dilation=cast("tuple[int, int]", conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        return layer._adopt(conv, bits, group_size, max_prune_fraction, tau)

    def forward(self, x: Tensor) -> Tensor:
        self._maybe_calibrate(x)
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class SBSLinear(SBSLayerMixin, nn.Linear):  # type: ignore[misc]  # torch types Linear.bias as Parameter, but it may be None
    """A Linear with SBS quantisation of weights and inputs."""

    @classmethod
    def from_module(
        cls, linear: nn.Linear, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float
    ) -> SBSLinear:
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        return layer._adopt(linear, bits, group_size, max_prune_fraction, tau)

    def forward(self, x: Tensor) -> Tensor:
        self._maybe_calibrate(x)
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


def sbs_layers(model: nn.Module) -> list[tuple[str, SBSLayerMixin]]:
    """Every SBS layer of ``model`` with its qualified name, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SBSLayerMixin)]
