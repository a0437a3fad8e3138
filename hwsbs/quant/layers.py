"""Quantised Conv2d / Linear with SBS gates (method sections 1-3).

A layer is in one of two modes:

* ``search``: every candidate bit width lives in one weight tensor (bit sharing); binary gates
  with learnable thresholds pick the weight and activation bits, and (for prunable layers) one
  gate per group of output channels is the 0-bit option.
* ``fixed``: a given (w_bits, a_bits), 32 meaning float; used for fine-tuning and baselines.

Thresholds are learned in units of their statistic's value at calibration *(hwsbs)*: the weight
residual at 4 bits is ~0.017 while a channel group's mean |w| is ~0.8, so a single threshold
learning rate and temperature suit every gate. The surrogate is then
``dg/dtheta = -sigma'((A/A0 - theta)/tau)/tau``, the paper's formula in those units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cost_models.base import FULL_PRECISION_BITS

from .fused import gated_quantize, lower_grid_residuals, sampled_residuals
from .gates import bits_from_gates, threshold_gate
from .quantizer import quantize, step_size

__all__ = ["SBSLayerMixin", "SBSConv2d", "SBSLinear", "sbs_layers"]

_EMA_MOMENTUM = 0.1  # running mean of per-batch activation residuals (method section 2)
_MIN_CLIP = 1e-3  # clipping values stay positive so the normalisation never divides by ~0
_EPS = 1e-8


class SBSLayerMixin:
    """State and forward logic shared by :class:`SBSConv2d` and :class:`SBSLinear`."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    out_features_or_channels: int

    def _init_sbs(
        self,
        bits: Sequence[int],
        group_size: int,
        max_prune_fraction: float,
        tau: float,
    ) -> None:
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
        self.register_buffer("a_residual_ema", torch.zeros(k - 1))  # running activation residuals
        # Gates of the latest forward, read by the cost term (differentiable w.r.t. thresholds).
        self.last_w_gates: Tensor | None = None  # one 0/1 gate per bit width above the lowest
        self.last_a_gates: Tensor | None = None
        self.last_p_gates: Tensor | None = None

    # ---------------------------------------------------------------- groups
    @property
    def num_groups(self) -> int:
        return math.ceil(self.weight.shape[0] / self.group_size)

    def group_sizes(self) -> list[int]:
        """Channels per pruning group (the last group may be smaller)."""
        n = self.weight.shape[0]
        return [min(self.group_size, n - g * self.group_size) for g in range(self.num_groups)]

    def _group_norms(self, w_std: Tensor) -> Tensor:
        """Mean |standardised w| per group of output channels."""
        per_channel = w_std.detach().abs().flatten(1).mean(1)
        pad = self.num_groups * self.group_size - per_channel.numel()
        padded = F.pad(per_channel, (0, pad))
        counts = torch.tensor(self.group_sizes(), dtype=per_channel.dtype, device=per_channel.device)
        return padded.view(self.num_groups, self.group_size).sum(1) / counts

    # ---------------------------------------------------------------- calibration
    @torch.no_grad()
    def _calibrate(self, x: Tensor) -> None:
        """Initialise clipping values and statistic scales from the first batch."""
        w_std = self._standardise(self.weight)[0]
        self.weight_clip.fill_(max(float(w_std.abs().max()), _MIN_CLIP))
        signed = bool(x.min() < 0)
        self.act_signed.fill_(signed)
        flat = x.detach().abs().flatten().float()
        if flat.numel() > 200_000:  # a quantile of a sample is enough, and kthvalue is O(n)
            flat = flat[torch.randperm(flat.numel(), device=flat.device)[:200_000]]
        clip = float(torch.quantile(flat, 0.999)) if flat.numel() > 1 else float(flat.max())
        self.act_clip.fill_(max(clip, _MIN_CLIP))
        w_stats, _ = lower_grid_residuals(self._normalise_weight(w_std), self.bits)
        a_stats = sampled_residuals(self._normalise_act(x, self.act_clip), self.bits)
        self.w_scale.copy_(w_stats.clamp_min(_EPS))
        self.a_scale.copy_(a_stats.clamp_min(_EPS))
        self.a_residual_ema.copy_(a_stats.clamp_min(_EPS))
        self.p_scale.fill_(max(float(self._group_norms(w_std).mean()), _EPS))
        self.calibrated.fill_(True)

    # ---------------------------------------------------------------- normalisation
    @staticmethod
    def _standardise(w: Tensor) -> tuple[Tensor, Tensor]:
        std = w.std() if w.numel() > 1 else w.abs().mean()
        std = std + _EPS
        return (w - w.mean()) / std, std

    def _weight_clip(self) -> Tensor:
        return _grad_scale(self.weight_clip, 1.0 / math.sqrt(self.weight.numel() * (2 ** self.bits[-1] - 1)))

    def _act_clip(self, x: Tensor) -> Tensor:
        per_sample = max(x[0].numel(), 1) if x.dim() > 1 else x.numel()
        return _grad_scale(self.act_clip, 1.0 / math.sqrt(per_sample * (2 ** self.bits[-1] - 1)))

    def _normalise_weight(self, w_std: Tensor) -> Tensor:
        v = self._weight_clip()
        return (torch.clamp(w_std / v, -1.0, 1.0) + 1.0) / 2.0

    def _normalise_act(self, x: Tensor, v: Tensor) -> Tensor:
        if self._host_flag("act_signed"):
            return (torch.clamp(x / v, -1.0, 1.0) + 1.0) / 2.0
        return torch.clamp(x / v, 0.0, 1.0)

    def _denormalise_act(self, z: Tensor, v: Tensor) -> Tensor:
        if self._host_flag("act_signed"):
            return v * (2.0 * z - 1.0)
        return v * z

    # ---------------------------------------------------------------- quantisers
    def quantized_weight(self) -> Tensor:
        """The weight the layer computes with in its current mode (pruning gates applied)."""
        searching = self.mode == "search" and not self.pinned
        w_bits = self.fixed_w_bits
        if not searching and w_bits >= FULL_PRECISION_BITS:
            self.last_p_gates = None
            return self.weight
        w_std, std = self._standardise(self.weight)
        z = self._normalise_weight(w_std)
        if searching and self.search_weight_bits:
            stats, grids = lower_grid_residuals(z, self.bits)
            gates = threshold_gate(stats / self.w_scale, self.w_theta, self.tau)
            self.last_w_gates = gates
            z_hat = gated_quantize(z, gates, self.bits, grids)
        else:
            z_hat = quantize(z, step_size(w_bits))
        w_q = std * self._weight_clip() * (2.0 * z_hat - 1.0)
        if searching and self.prunable:
            stats = self._group_norms(w_std) / self.p_scale
            g = threshold_gate(stats, self.p_theta, self.tau)
            self.last_p_gates = g
            w_q = w_q * self._expand_groups(g).view(-1, *([1] * (w_q.dim() - 1)))
        else:
            self.last_p_gates = None
        return w_q

    def _expand_groups(self, g: Tensor) -> Tensor:
        return g.repeat_interleave(self.group_size)[: self.weight.shape[0]]

    def gated_bias(self) -> Tensor | None:
        if self.bias is None or self.last_p_gates is None:
            return self.bias
        return self.bias * self._expand_groups(self.last_p_gates)

    def quantized_input(self, x: Tensor) -> Tensor:
        """The input activation as the layer sees it in its current mode."""
        searching = self.mode == "search" and not self.pinned
        if not searching and self.fixed_a_bits >= FULL_PRECISION_BITS:
            return x
        v = self._act_clip(x)
        z = self._normalise_act(x, v)
        if searching:
            if self.training:  # the statistic on a fixed sample; only the chosen grid is computed in full
                batch_stats = sampled_residuals(z, self.bits)
                with torch.no_grad():
                    self.a_residual_ema.lerp_(batch_stats, _EMA_MOMENTUM)
            else:
                batch_stats = self.a_residual_ema
            gates = threshold_gate(batch_stats / self.a_scale, self.a_theta, self.tau)
            self.last_a_gates = gates
            z_hat = gated_quantize(z, gates, self.bits)
        else:
            z_hat = quantize(z, step_size(self.fixed_a_bits))
        return self._denormalise_act(z_hat, v)

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
        w_std, _ = self._standardise(self.weight)
        if self.search_weight_bits:
            stats, _ = lower_grid_residuals(self._normalise_weight(w_std), self.bits)
            w_rel = (stats / self.w_scale).tolist()
            w_bits = bits_from_gates(self.bits, [a > float(t) for a, t in zip(w_rel, self.w_theta)])
        else:
            w_bits = self.fixed_w_bits
        a_rel = (self.a_residual_ema / self.a_scale).tolist()
        a_bits = bits_from_gates(self.bits, [a > float(t) for a, t in zip(a_rel, self.a_theta)])
        return w_bits, a_bits

    @torch.no_grad()
    def pruned_groups(self) -> list[int]:
        """Indices of the channel groups whose pruning gate is closed."""
        if not (self.prunable and self.mode == "search" and not self.pinned):
            return []
        stats = self._group_norms(self._standardise(self.weight)[0]) / self.p_scale
        return [i for i, s in enumerate(stats.tolist()) if not s > float(self.p_theta)]

    def pruned_channels(self) -> list[int]:
        return [c for g in self.pruned_groups() for c in range(g * self.group_size, min((g + 1) * self.group_size, self.weight.shape[0]))]

    @torch.no_grad()
    def clamp_parameters(self) -> None:
        """Keep thresholds >= 0, clipping values > 0, and pruning under its cap (method 2-3)."""
        self.w_theta.clamp_(min=0.0)
        self.a_theta.clamp_(min=0.0)
        self.weight_clip.clamp_(min=_MIN_CLIP)
        self.act_clip.clamp_(min=_MIN_CLIP)
        self.p_theta.clamp_(min=0.0)
        if self.prunable:
            stats = torch.sort(self._group_norms(self._standardise(self.weight)[0]) / self.p_scale).values
            max_pruned = int(math.floor(self.max_prune_fraction * self.num_groups + 1e-9))
            max_pruned = min(max_pruned, self.num_groups - 1)  # never prune a whole layer
            # Groups with stat <= theta are pruned: keep theta below the (max_pruned+1)-th smallest.
            # (on the device: reading the value back would stall a GPU once per layer and step)
            ceiling = (stats[max_pruned] * (1.0 - 1e-6)).clamp_min(0.0)
            self.p_theta.copy_(torch.minimum(self.p_theta, ceiling))

    def set_fixed(self, w_bits: int, a_bits: int) -> None:
        """Switch to fixed mode with the given bit widths (32 = float)."""
        self.mode = "fixed"
        self.fixed_w_bits = int(w_bits)
        self.fixed_a_bits = int(a_bits)

    def threshold_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Thresholds by gate family, for the alternating updates (weights+pruning vs activations)."""
        return {"weight": [self.w_theta, self.p_theta], "activation": [self.a_theta]}

    def extra_repr(self) -> str:  # type: ignore[override]
        base = super().extra_repr()  # type: ignore[misc]
        state: dict[str, Any] = {"mode": self.mode, "bits": self.bits}
        if self.pinned or self.mode == "fixed":
            state["w/a"] = f"{self.fixed_w_bits}/{self.fixed_a_bits}"
        if self.prunable:
            state["prunable"] = True
        return base + ", " + ", ".join(f"{k}={v}" for k, v in state.items())


def _grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass, ``scale * grad`` in the backward (LSQ's step-size gradient scale).

    A clipping value collects one gradient term per element it clips; without this scale its
    gradient grows with the tensor size and deep models diverge.
    """
    scaled = x * scale
    return (x - scaled).detach() + scaled


class SBSConv2d(SBSLayerMixin, nn.Conv2d):
    """A Conv2d (grouped and depthwise included) with SBS quantisation of weights and inputs."""

    @classmethod
    def from_module(cls, conv: nn.Conv2d, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float) -> SBSConv2d:
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        layer._init_sbs(bits, group_size, max_prune_fraction, tau)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(conv.weight.device)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._maybe_calibrate(x)
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.gated_bias())


class SBSLinear(SBSLayerMixin, nn.Linear):
    """A Linear with SBS quantisation of weights and inputs."""

    @classmethod
    def from_module(cls, linear: nn.Linear, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float) -> SBSLinear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer._init_sbs(bits, group_size, max_prune_fraction, tau)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer.to(linear.weight.device)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._maybe_calibrate(x)
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.gated_bias())


def sbs_layers(model: nn.Module) -> list[tuple[str, SBSLayerMixin]]:
    """Every SBS layer of ``model`` with its qualified name, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SBSLayerMixin)]
