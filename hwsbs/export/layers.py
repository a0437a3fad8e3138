"""One exported Conv2d/Linear: a plain record (saved) and the module rebuilt from it (run).

A layer at <= 8 bits in both operands runs on an integer kernel (:mod:`hwsbs.export.kernels`)
when the back-end executes that bit pair exactly; every other layer runs in float32 on the
fake-quantised values (what a device without the kernel does: the next wider path). A batch-norm
that directly follows a convolution is folded into its per-channel output scale and bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardware_profiles import FLOAT_BITS
from hwsbs.errors import ModelError
from hwsbs.quant.layers import SBSLayerMixin
from hwsbs.quant.matmul import SBSMatmul

from .encoding import MAX_INT_BITS, input_codes, odd_weights
from .kernels import IntKernel, OneDNNKernel, build_kernel

__all__ = ["LayerRecord", "ExportedLayer", "check_exportable"]


@dataclass
class LayerRecord:
    """Everything needed to rebuild one exported layer: tensors plus plain metadata."""

    name: str  # qualified module name
    kind: str  # "conv" or "linear"
    in_channels: int  # kept input channels (features)
    out_channels: int  # kept output channels
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str  # a tuple, or "same"/"valid"
    dilation: tuple[int, int]
    groups: int
    padding_mode: str  # nn.Conv2d padding_mode ("zeros" for linear)
    w_bits: int
    a_bits: int
    act_signed: bool  # the input quantiser is signed (calibration saw negative inputs)
    path: str  # "int8" (integer kernel) or "float"
    reason: str  # why this path (e.g. "int16 saturation without VNNI")
    weight: Tensor  # int8 codes (w_bits <= 8) or float32 fake-quantised weights
    weight_scale: Tensor  # 0-d float32: w_q = weight_scale * n (1 for float weights)
    doubled: bool  # 8-bit codes: n = 2 * code + 1
    act_clip: Tensor  # 0-d float32 clip v of the input quantiser, as the layer computes it (unused at 32 bits)
    out_scale: Tensor  # per output channel, float32: folded batch-norm scale (ones without one)
    out_bias: Tensor  # per output channel, float32: bias after folding
    folded_norm: str | None  # the batch-norm folded into this layer, if any
    # Channel-wise weight bits: one record per width (its rows), and where each output channel
    # sits in their concatenation (hwsbs.export.mixed); empty for a one-width layer.
    parts: list[LayerRecord] = field(default_factory=list)
    channel_order: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, so ``torch.load(weights_only=True)`` reads it back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        out["parts"] = [p.to_dict() for p in self.parts]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerRecord:
        values = dict(data)
        for key in ("kernel_size", "stride", "dilation"):
            values[key] = tuple(values[key])
        if not isinstance(values["padding"], str):
            values["padding"] = tuple(values["padding"])
        values["parts"] = [cls.from_dict(p) for p in values.get("parts", [])]
        return cls(**values)

    @property
    def quantised_input(self) -> bool:
        return self.a_bits < FLOAT_BITS  # SBS layers quantise every width below 32

    def float_weight(self) -> Tensor:
        """The fake-quantised weight in float32, batch-norm scale folded in."""
        if self.w_bits <= MAX_INT_BITS:
            w = self.weight_scale * odd_weights(self.weight, self.doubled).to(torch.float32)
        else:
            w = self.weight.to(torch.float32)
        return w * self.out_scale.view(-1, *([1] * (w.dim() - 1)))


class ExportedLayer(nn.Module):
    """A Conv2d/Linear rebuilt from a :class:`LayerRecord` (no state_dict entries of its own)."""

    def __init__(self, record: LayerRecord, backend: str, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.record = record
        self.backend = backend if record.path == "int8" else "float"
        dev = torch.device(device)
        self.clip = record.act_clip.to(dev, torch.float32)
        self._border_cache: dict[tuple[int, int], Tensor] = {}
        self.kernel: IntKernel | None = None
        self.activation: str | None = None  # a fused ReLU / ReLU6 (see hwsbs.export.fuse)
        self._clamp_output = False  # apply it here, in place (not inside the kernel)
        self.border_scale: Tensor | None = None  # signed padded inputs: per-position correction
        if record.path == "int8":
            self._build_int(record, dev)
        else:
            weight = record.float_weight()
            if record.quantised_input:
                # conv(s_a * n_a, W) = conv(n_a, s_a * W): the input scale moves into the weight,
                # so the layer reads the integer levels and skips two passes over its input.
                weight = weight * (record.act_clip.float() / (2**record.a_bits - 1))
            self.weight = weight.to(dev)
            self.bias = record.out_bias.to(dev, torch.float32)
            if record.kind == "conv" and dev.type == "cpu":  # mkldnn convolutions run NHWC fastest
                self.weight = self.weight.contiguous(memory_format=torch.channels_last)
            if record.kind == "conv" and record.padding_mode != "zeros":
                ph, pw = cast("tuple[int, int]", record.padding)  # unpacked as a pair, as before
                self._pad = (pw, pw, ph, ph)

    # ---------------------------------------------------------------- integer path
    def _build_int(self, r: LayerRecord, dev: torch.device) -> None:
        levels = 2**r.a_bits - 1
        s_a = self.clip.cpu() / levels
        g = (s_a * r.weight_scale * r.out_scale).to(torch.float32)  # per output channel
        n = odd_weights(r.weight, r.doubled)
        beta = r.out_bias.to(torch.float32)
        if r.act_signed:
            # x_q = s_a (2u - L) off the padding: 2 g S - g L sum(n over the window); the
            # full-window part is a per-channel constant, the rest is added near the borders.
            beta = beta - g * levels * n.flatten(1).sum(1).to(torch.float32)
            # the int8 path is planned for pair paddings only (plan_path)
            padded = r.kind == "conv" and any(p > 0 for p in cast("tuple[int, int]", r.padding))
            if padded:
                self.border_scale = (g * levels).to(dev)
                self._n64 = n.to(torch.float64)
            g = 2.0 * g
        geometry: dict[str, Any] = {"a_bits": r.a_bits}
        if r.kind == "conv":
            geometry.update(stride=r.stride, padding=r.padding, dilation=r.dilation, groups=r.groups)
        self.kernel = build_kernel(self.backend, r.weight.to(dev), r.doubled, g.to(dev), beta.to(dev), **geometry)

    def _border(self, h: int, w: int, like: Tensor) -> Tensor:
        """``g L (sum(n) - sum(n over the non-padded window))`` per channel and output position."""
        key = (h, w)
        term = self._border_cache.get(key)
        if term is None:
            r = self.record
            ones = torch.ones(1, self._n64.shape[1] * r.groups, h, w, dtype=torch.float64)
            inside = F.conv2d(ones, self._n64, None, r.stride, r.padding, r.dilation, r.groups)
            full = self._n64.flatten(1).sum(1).view(1, -1, 1, 1)
            assert self.border_scale is not None
            term = (full - inside).to(torch.float32).to(like.device) * self.border_scale.view(1, -1, 1, 1)
            self._border_cache[key] = term
        return term

    def fuse_activation(self, kind: str) -> None:
        """Apply ``relu`` or ``relu6`` to this layer's output (in the kernel where it can)."""
        if kind not in ("relu", "relu6"):
            raise ValueError(f"cannot fuse activation {kind!r}")
        self.activation = kind
        in_kernel = (
            isinstance(self.kernel, OneDNNKernel) and self.border_scale is None and self.kernel.fuse_post_op(kind)
        )
        self._clamp_output = not in_kernel

    def _activate(self, y: Tensor) -> Tensor:
        if not self._clamp_output:
            return y
        return y.clamp_min_(0.0) if self.activation == "relu" else y.clamp_(0.0, 6.0)

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        return self._activate(self._forward(x))

    def _forward(self, x: Tensor) -> Tensor:
        r = self.record
        if self.kernel is not None:
            u = input_codes(x, self.clip, r.a_bits, r.act_signed)
            if r.kind == "linear":
                lead = u.shape[:-1]
                y = self.kernel(u.reshape(-1, u.shape[-1]))
                return y.reshape(*lead, y.shape[-1])
            y = self.kernel(u)
            if self.border_scale is not None:
                y = y.add_(self._border(int(x.shape[-2]), int(x.shape[-1]), y))
            return y
        if r.quantised_input:  # integer levels as floats (odd levels when signed, 0 = padding)
            x = input_codes(x, self.clip, r.a_bits, r.act_signed)
            if r.act_signed:
                x = x.mul_(2.0).sub_(2**r.a_bits - 1)
        if r.kind == "linear":
            return F.linear(x, self.weight, self.bias)
        if r.padding_mode != "zeros":
            x = F.pad(x, self._pad, mode=r.padding_mode)
            return F.conv2d(x, self.weight, self.bias, r.stride, 0, r.dilation, r.groups)
        return F.conv2d(x, self.weight, self.bias, r.stride, r.padding, r.dilation, r.groups)

    def extra_repr(self) -> str:
        r = self.record
        bits = f"w{r.w_bits}/a{r.a_bits}{'s' if r.act_signed and r.quantised_input else ''}"
        kernel = f"{self.backend}" + (f" ({r.reason})" if r.reason else "")
        if self.activation:
            kernel += f" + {self.activation}"
        return f"{r.kind} {r.in_channels}->{r.out_channels}, {bits}, {kernel}"


def check_exportable(layers: list[tuple[str, SBSLayerMixin]]) -> None:
    """Raise ModelError for layers without an integer kernel (the search model runs them, fake-quantised)."""
    odd = [n for n, m in layers if isinstance(m, SBSMatmul) or m.act_float or m.weight_group > 0]
    if odd:
        raise ModelError(f"layer {odd[0]}: attention products and weight-only layers have no integer export yet")
