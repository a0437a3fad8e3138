"""Export APB layers to the bitwise kernels (:mod:`hwsbs.apb.kernels`).

:func:`hwsbs.export.export_model` turns every frozen APB layer into a :class:`LayerRecord` with
``path == "apb"`` (:func:`apb_record`) and runs it as an :class:`APBKernelLayer`: the packed
signs, ``alpha`` and the outliers' residuals ``w - alpha * sign(w)`` as CSR, so
``y = out_scale * (alpha * (B x) + S x) + out_bias`` with ``B x`` from the integer AND + popcount
product over the input codes' bit planes. The record stores the APB weight itself (binary
positions exactly ``+-alpha``), from which loading re-derives the packed form.
:func:`hwsbs.export.load_run` loads APB runs like any other (``compressed_model`` makes their
layers APB again from the checkpoint and checks the masks against config.yaml).
"""

from __future__ import annotations

import copy
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardware_profiles import FLOAT_BITS
from hwsbs.apb.format import apb_alpha_delta, is_apb_layer
from hwsbs.apb.kernels import HAVE_NUMBA, binary_gemm_codes, csr_gemm, pack_bits, to_csr
from hwsbs.errors import ModelError
from hwsbs.quant.layers import SBSConv2d, SBSLayerMixin
from hwsbs.sbs.convert import set_submodule

from .encoding import fake_quant_input, input_codes
from .layers import ExportedLayer, LayerRecord

__all__ = ["APB_PATH", "APBKernelLayer", "apb_record", "exported_layer", "export_apb", "verify_apb"]

#: ``LayerRecord.path`` of an APB layer.
APB_PATH = "apb"
_KERNEL = "bitwise AND+popcount, CSR outliers" + ("" if HAVE_NUMBA else " (numpy: numba missing)")


def apb_record(
    name: str, layer: SBSLayerMixin, clip: Tensor | None, norm: tuple[str, Tensor, Tensor] | None = None
) -> LayerRecord:
    """The record of a frozen APB layer.

    Args:
        name: its qualified name.
        layer: the APB layer (mask frozen).
        clip: its input clip as its forward computes it (None: ``act_clip``).
        norm: a folded batch-norm: (name, per-channel scale, shift).

    Raises:
        ModelError: the mask is not frozen, or the layer is a grouped convolution.
    """
    mod: Any = layer
    if not bool(mod.apb_frozen):
        raise ModelError(f"APB layer {name}: mask not frozen; export the searched (fine-tuned) model")
    alpha, _ = apb_alpha_delta(mod)
    conv = isinstance(layer, SBSConv2d)
    if conv and mod.groups != 1:
        raise ModelError(f"APB layer {name}: grouped convolutions have no APB kernel")
    out_ch = int(mod.weight.shape[0])
    bias = mod.bias.detach().float().clone() if mod.bias is not None else torch.zeros(out_ch)
    scale = torch.ones(out_ch)
    if norm is not None:
        scale, shift = norm[1].float(), norm[2].float()
        bias = bias * scale + shift
    pair = (1, 1)
    return LayerRecord(
        name=name,
        kind="conv" if conv else "linear",
        in_channels=int(mod.in_channels if conv else mod.weight.shape[1]),
        out_channels=out_ch,
        kernel_size=tuple(mod.kernel_size) if conv else pair,
        stride=tuple(mod.stride) if conv else pair,
        padding=(mod.padding if isinstance(mod.padding, str) else tuple(mod.padding)) if conv else (0, 0),
        dilation=tuple(mod.dilation) if conv else pair,
        groups=1,
        padding_mode=str(mod.padding_mode) if conv else "zeros",
        w_bits=1,
        a_bits=int(layer.fixed_a_bits),
        act_signed=bool(layer.act_signed),
        path=APB_PATH,
        reason=_KERNEL,
        weight=layer.quantized_weight().detach().float().clone(),  # exactly +-alpha where binary
        weight_scale=alpha.detach().float().reshape(()),
        doubled=False,
        act_clip=(clip if clip is not None else mod.act_clip.detach()).float().reshape(()).clone(),
        out_scale=scale.contiguous(),
        out_bias=bias.contiguous(),
        folded_norm=norm[0] if norm is not None else None,
    )


class APBKernelLayer(ExportedLayer):
    """An APB Conv2d or Linear on the bit-packed kernels (CPU). With the ``float`` back-end, on
    another device, float activations or non-zero padding modes it runs the same weights in float32."""

    def __init__(self, record: LayerRecord, backend: str, device: torch.device | str = "cpu") -> None:
        nn.Module.__init__(self)
        self.record = record
        dev = torch.device(device)
        self.clip = record.act_clip.to(torch.float32)
        self.kernel = None
        self.border_scale = None
        self._border_cache: dict[tuple[int, int], Tensor] = {}
        self.activation: str | None = None
        self._clamp_output = False
        quantised = record.a_bits < FLOAT_BITS
        bitwise = backend != "float" and dev.type == "cpu" and quantised and record.padding_mode == "zeros"
        self.bitwise = bitwise and not isinstance(record.padding, str)
        self.backend = APB_PATH if self.bitwise else "float"
        w = record.weight.float()
        self.weight = (w * record.out_scale.view(-1, *([1] * (w.dim() - 1)))).to(dev)  # the float path
        self.bias = record.out_bias.to(dev, torch.float32)
        flat = w.reshape(w.shape[0], -1)
        self.alpha = float(record.weight_scale)
        signs = flat >= 0
        sign_val = torch.where(signs, self.alpha, -self.alpha)
        self.w_packed = pack_bits(signs.numpy())
        self.signs64 = torch.where(signs, 1.0, -1.0).double()  # signed padded inputs: B @ valid
        residual = torch.where(flat == sign_val, 0.0, flat - sign_val).double()
        self.values, self.cols, self.indptr = to_csr(residual.numpy(), np.float64)
        self.out_scale64 = record.out_scale.double()
        self.bias64 = record.out_bias.double()

    def fuse_activation(self, kind: str) -> None:
        """Apply ``relu`` or ``relu6`` to this layer's output (an in-place clamp)."""
        if kind not in ("relu", "relu6"):
            raise ValueError(f"cannot fuse activation {kind!r}")
        self.activation, self._clamp_output = kind, True

    def _columns(self, t: Tensor) -> Tensor:
        """GEMM rows ``[M, K]``: im2col for a conv, the flattened leading dimensions for a linear."""
        r = self.record
        if r.kind == "linear":
            return t.reshape(-1, t.shape[-1])
        cols = F.unfold(t, r.kernel_size, r.dilation, cast("tuple[int, int]", r.padding), r.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def _valid_sum(self, x: Tensor, rows: int) -> Tensor:
        """``B @ 1[not padding]`` per GEMM row (signed inputs: padded positions hold exact zeros)."""
        if self.record.kind == "linear":
            return self.signs64.sum(1)[None, :]
        key = (int(x.shape[-2]), int(x.shape[-1]))
        per_pos = self._border_cache.get(key)
        if per_pos is None:
            per_pos = self._columns(torch.ones(1, x.shape[1], *key, dtype=torch.float64)) @ self.signs64.T
            self._border_cache[key] = per_pos
        return per_pos.repeat(rows // per_pos.shape[0], 1)

    def _forward(self, x: Tensor) -> Tensor:
        r = self.record
        if not self.bitwise:
            xq = x.float()
            if r.a_bits < FLOAT_BITS:
                xq = fake_quant_input(xq, self.clip.to(x.device), r.a_bits, r.act_signed)
            if r.kind == "linear":
                return F.linear(xq, self.weight, self.bias)
            return F.conv2d(xq, self.weight, self.bias, r.stride, r.padding, r.dilation, r.groups)
        xf = x.detach().float()
        levels = 2**r.a_bits - 1
        codes = self._columns(input_codes(xf, self.clip, r.a_bits, r.act_signed))
        icodes = codes.to(torch.int32).numpy()
        prod = torch.from_numpy(binary_gemm_codes(self.w_packed, icodes, r.a_bits)).double()
        v = float(self.clip)
        if r.act_signed:  # x_q = (2v / L) j - v on real inputs
            y = prod * (2.0 * self.alpha * v / levels) - self.alpha * v * self._valid_sum(xf, prod.shape[0])
        else:  # x_q = (v / L) j
            y = prod * (self.alpha * v / levels)
        dense = self._columns(fake_quant_input(xf, self.clip, r.a_bits, r.act_signed)).double().numpy()
        y = (y + torch.from_numpy(csr_gemm(self.values, self.cols, self.indptr, dense))) * self.out_scale64
        y = (y + self.bias64).float()
        if r.kind == "linear":
            return y.reshape(*x.shape[:-1], r.out_channels)
        (kh, kw), (sh, sw), (dh, dw) = r.kernel_size, r.stride, r.dilation
        ph, pw = cast("tuple[int, int]", r.padding)
        oh = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return y.reshape(x.shape[0], oh, ow, r.out_channels).permute(0, 3, 1, 2).to(x.device)


def exported_layer(record: LayerRecord, backend: str, device: torch.device | str = "cpu") -> ExportedLayer:
    """The module that runs ``record``: an :class:`APBKernelLayer` for APB records."""
    if record.path == APB_PATH:
        return APBKernelLayer(record, backend, device)
    return ExportedLayer(record, backend, device)


def export_apb(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with only its APB layers on the bitwise kernels (CPU, eval mode); the
    rest stays as it is. :func:`hwsbs.export.export_model` exports whole models.

    Raises:
        ModelError: an APB layer's mask is not frozen, or it has no kernel.
    """
    out = copy.deepcopy(model).cpu().eval()
    for name, mod in list(out.named_modules()):
        if is_apb_layer(mod):
            set_submodule(out, name, APBKernelLayer(apb_record(name, mod, None), "auto"))
    return out


@torch.no_grad()
def verify_apb(model: nn.Module, exported: nn.Module, x: Tensor) -> float:
    """Largest absolute difference between the search model and its export on ``x``, relative to
    the largest output magnitude (well under 1e-4 when the export is right)."""
    model = model.cpu().eval()
    ref, got = model(x.cpu()), exported(x.cpu())
    return float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))
