"""One exported layer as ONNX QDQ nodes (``onnx.helper``), exactly on the search's grids.

The mapping (see docs/deploy.md):

* Unsigned inputs (``a_bits = k <= 8``): the fake quantiser's levels ``j = round(clamp(x / v, 0, 1)
  * L)``, ``L = 2^k - 1``, are ``QuantizeLinear(x, s_a = v / L, zero point 0)`` in uint8, and for
  ``k < 8`` a uint8 ``Clip(0, L)`` after it (QuantizeLinear saturates at 255 only).
* Signed inputs: ``x_q = s_a (2j - L)`` has an even number of levels and no zero level, so no
  integer zero point exists. The graph quantises ``x + v`` instead: ``QuantizeLinear(x + v, 2 s_a,
  0)`` gives the same ``j`` and dequantises to ``x_q + v``; the layer subtracts ``v * sum(W over
  the window)``, a per-channel constant folded into the bias plus, for padded convolutions, a
  constant border term (the padding is a true 0, as in the search model).
* Weights (``w_bits = k <= 8``): the odd integers ``n`` of :mod:`hwsbs.export.encoding` as int8
  with a per-channel scale ``s_w * bn_scale``. ``|n| <= 2^k - 1`` fits int8 up to 7 bits (exact);
  8-bit channels whose ``|n|`` exceeds 127 are rounded onto ``round(n * 127 / max|n|)`` (the one
  inexact step, at most half an 8-bit step per weight).
* Biases of layers with both operands quantised are int32 at scale ``s_x * s_w`` (what
  ``QLinearConv`` takes), so ONNX Runtime fuses ``DQ -> Conv -> (Relu) -> Q`` into integer kernels.
* Wider layers (> 8 bits) run in float32: fake-quantised weights, and ``Round``-based fake
  quantisation of inputs below 32 bits.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hwsbs.errors import ConfigError, ModelError

from .encoding import MAX_INT_BITS, odd_weights
from .layers import LayerRecord

__all__ = ["OPSET", "IR_VERSION", "GraphBuilder", "require_onnx", "emit_layer"]

#: ONNX opset of the exported graphs (ONNX Runtime >= 1.14 runs it; per-channel QDQ needs >= 13).
OPSET = 17
#: IR version matching OPSET, so older runtimes than the onnx package's newest read the file.
IR_VERSION = 8
_INSTALL = "pip install -e '.[deploy]' (or pip install onnx onnxruntime)"


def require_onnx(what: str = "--format onnx") -> Any:
    """The ``onnx`` module, or ConfigError naming the extra to install."""
    try:
        import onnx
    except ImportError:
        raise ConfigError(f"{what} needs the onnx package, which is not installed: {_INSTALL}") from None
    return onnx


class GraphBuilder:
    """Nodes and initialisers of one ONNX graph, with unique names."""

    def __init__(self) -> None:
        self.onnx = require_onnx()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._used: dict[str, int] = {}
        self._cache: dict[tuple[Any, ...], str] = {}

    def name(self, hint: str) -> str:
        """A fresh value name starting with ``hint``."""
        n = self._used.get(hint, 0)
        self._used[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def const(self, hint: str, array: np.ndarray) -> str:
        """An initialiser holding ``array`` (its dtype and shape as is: 0-d stays a scalar, which ONNX
        Runtime's QDQ fusion of Add/pooling requires of scales and zero points)."""
        name = self.name(hint)
        data = array if array.flags.c_contiguous else np.ascontiguousarray(array)
        self.initializers.append(self.onnx.numpy_helper.from_array(data, name))
        return name

    def scalar(self, hint: str, value: float, dtype: Any = np.float32) -> str:
        """A 0-d initialiser (shared by every node asking for the same value and dtype)."""
        key = ("scalar", float(value), np.dtype(dtype).str)
        if key not in self._cache:
            self._cache[key] = self.const(hint, np.array(value, dtype=dtype))
        return self._cache[key]

    def node(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        """Append ``op`` with one output; returns the output's name."""
        out = self.name(hint)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def cached(self, key: tuple[Any, ...]) -> str | None:
        return self._cache.get(key)

    def remember(self, key: tuple[Any, ...], value: str) -> str:
        self._cache[key] = value
        return value


def quantise_input(g: GraphBuilder, x: str, clip: float, bits: int, signed: bool, hint: str) -> tuple[str, float]:
    """``x`` through the layer's input quantiser as QDQ: (dequantised value, its scale).

    Signed inputs come out shifted by ``+clip`` (see the module docstring); one quantiser per
    (value, clip, bits, sign) is emitted, so layers reading the same tensor alike share it.
    """
    key = ("q", x, float(clip), bits, signed)
    levels = 2**bits - 1
    scale = float(np.float32(clip) / np.float32(levels)) * (2.0 if signed else 1.0)
    found = g.cached(key)
    if found is not None:
        return found, scale
    src = g.node("Add", [x, g.scalar("clip", clip)], f"{hint}.shift") if signed else x
    s, zp = g.scalar("scale", scale), g.scalar("zp_u8", 0, np.uint8)
    q = g.node("QuantizeLinear", [src, s, zp], f"{hint}.q")
    if bits < MAX_INT_BITS:  # QuantizeLinear saturates at 255: clamp to the k-bit levels
        q = g.node("Clip", [q, zp, g.scalar("levels", levels, np.uint8)], f"{hint}.clamp")
    return g.remember(key, g.node("DequantizeLinear", [q, s, zp], f"{hint}.dq")), scale


def fake_quantise_float(g: GraphBuilder, x: str, clip: float, bits: int, signed: bool, hint: str) -> str:
    """A > 8-bit input quantiser in float32 ops (``Round`` rounds half to even, as torch does)."""
    levels = 2**bits - 1
    step = float(clip) / levels * (2.0 if signed else 1.0)
    lo = g.scalar("neg_clip", -clip) if signed else g.scalar("zero", 0.0)
    z = g.node("Clip", [x, lo, g.scalar("clip", clip)], f"{hint}.clip")
    if signed:
        z = g.node("Add", [z, g.scalar("clip", clip)], f"{hint}.shift")
    j = g.node("Round", [g.node("Div", [z, g.scalar("step", step)], f"{hint}.div")], f"{hint}.round")
    y = g.node("Mul", [j, g.scalar("step", step)], f"{hint}.levels")
    return g.node("Sub", [y, g.scalar("clip", clip)], f"{hint}.unshift") if signed else y


def weight_grid(r: LayerRecord, exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """int8 codes, positive per-channel scales and (exact 8-bit weights) the per-channel scale of
    the rank-1 term: ``W = scale * q (+ rank1 * 1)``, batch-norm scale folded in."""
    scale = r.weight_scale.double() * r.out_scale.double()
    mag, neg, zero = scale.abs(), scale < 0, scale == 0
    if r.doubled and exact:  # n = 2 code + 1: W = |s| (2 q + 1) with q = code, or -code - 1 when s < 0
        code = r.weight.to(torch.float64).flatten(1)
        q = torch.where(neg[:, None], -code - 1.0, code)
        c, rank1 = 2.0 * mag, mag.clone()
        q[zero], c[zero], rank1[zero] = 0.0, 1.0, 0.0
        return _codes(q, r), c.to(torch.float32).numpy(), rank1.to(torch.float32).numpy()
    n = odd_weights(r.weight, r.doubled).to(torch.float64).flatten(1)
    peak = n.abs().amax(1).clamp_min(1.0)
    # Narrow grids are stretched by a whole factor (exact: the scale shrinks by it), so the int32
    # bias at scale s_x * s_w is rounded on a finer step; <= 64 keeps u8 x s8 pair sums of 8-bit
    # inputs inside int16 on CPUs without VNNI. 8-bit channels above 127 are rounded onto int8.
    limit = 127 if r.a_bits < MAX_INT_BITS or not r.quantised_input else 64
    stretch = torch.clamp(torch.floor(limit / peak), min=1.0)
    factor = torch.where(peak > 127, 127.0 / peak, stretch)
    q = torch.round(n * factor[:, None]) * torch.where(neg, -1.0, 1.0)[:, None]
    c = mag / factor
    q[zero], c[zero] = 0.0, 1.0
    return _codes(q, r), c.to(torch.float32).numpy(), None


def _codes(q: Tensor, r: LayerRecord) -> np.ndarray:
    return q.to(torch.int8).reshape(r.weight.shape).numpy()


def _same_pads(r: LayerRecord) -> tuple[int, int, int, int]:
    """ONNX ``pads`` (top, left, bottom, right) for a record's padding."""
    if r.padding == "valid":
        return (0, 0, 0, 0)
    if r.padding == "same":
        total = [d * (k - 1) for d, k in zip(r.dilation, r.kernel_size)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    ph, pw = cast("tuple[int, int]", r.padding)  # a pair: the mode strings are handled above
    return (ph, pw, ph, pw)


def _torch_padding(pads: list[int]) -> tuple[int, int, int, int]:
    return (pads[1], pads[3], pads[0], pads[2])  # F.pad order: left, right, top, bottom


def _rank1_term(g: GraphBuilder, xin: str, r: LayerRecord, pads: list[int], rank1: np.ndarray, hint: str) -> str:
    """``rank1[o] * sum(x over o's window)``: the ``+1`` of exact 8-bit weights ``2 q + 1``."""
    if r.kind == "linear":
        axes = g.const(f"{hint}.axes", np.array([-1], np.int64))
        total = g.node("ReduceSum", [xin, axes], f"{hint}.sum", keepdims=1)
        return g.node("Mul", [total, g.const(f"{hint}.rank1", rank1)], f"{hint}.rank1_term")
    geometry = dict(kernel_shape=list(r.kernel_size), strides=list(r.stride), pads=pads, dilations=list(r.dilation))
    cin = r.in_channels // r.groups
    if r.groups == 1:  # one box-sum channel, scaled per output channel
        ones = np.ones((1, cin, *r.kernel_size), np.float32)
        total = g.node("Conv", [xin, g.const(f"{hint}.ones", ones)], f"{hint}.sum", group=1, **geometry)
        return g.node("Mul", [total, g.const(f"{hint}.rank1", rank1.reshape(1, -1, 1, 1))], f"{hint}.rank1_term")
    box = np.ones((r.out_channels, cin, *r.kernel_size), np.float32) * rank1.reshape(-1, 1, 1, 1)
    return g.node("Conv", [xin, g.const(f"{hint}.box", box)], f"{hint}.rank1_term", group=int(r.groups), **geometry)


def emit_layer(
    g: GraphBuilder,
    x: str,
    r: LayerRecord,
    in_shape: tuple[int, ...],
    activation: str | None,
    exact_8bit_weights: bool = True,
    int_bias: bool = True,
) -> str:
    """Append ``r`` (reading float value ``x`` of ``in_shape``) and its fused activation.

    ``exact_8bit_weights=False`` rounds 8-bit weights onto int8 instead of adding their rank-1
    term (one node less, so ONNX Runtime fuses the layer; the weights move by <= half a step).
    ``int_bias`` writes the bias as int32 (rounded to ``s_x * s_w``), which ONNX Runtime needs to
    fuse the layer into an integer kernel: worth it only where the output goes straight to the
    next quantiser; elsewhere the float bias keeps the layer exact.

    Raises:
        ModelError: a padding mode the export does not map to ONNX.
    """
    hint = r.name or "layer"
    if r.kind == "conv" and r.padding_mode != "zeros":
        raise ModelError(f"layer {r.name}: padding_mode {r.padding_mode!r} has no ONNX export (zeros only)")
    int_in = r.quantised_input and r.a_bits <= MAX_INT_BITS
    clip = float(r.act_clip)
    s_x = 1.0
    if int_in:
        xin, s_x = quantise_input(g, x, clip, r.a_bits, r.act_signed, hint)
    elif r.quantised_input:
        xin = fake_quantise_float(g, x, clip, r.a_bits, r.act_signed, hint)
    else:
        xin = x
    rank1: np.ndarray | None = None
    if r.w_bits <= MAX_INT_BITS:
        q, c, rank1 = weight_grid(r, exact_8bit_weights)
        per_channel = (-1, *([1] * (q.ndim - 1)))
        w_real = torch.from_numpy(q).double() * torch.from_numpy(c).double().view(per_channel)
        if rank1 is not None:
            w_real = w_real + torch.from_numpy(rank1).double().view(per_channel)
    else:
        w_real = r.float_weight().double()
    bias = r.out_bias.double().clone()
    border: np.ndarray | None = None
    pads = list(_same_pads(r)) if r.kind == "conv" else [0, 0, 0, 0]
    if int_in and r.act_signed:  # undo the +clip shift: clip * sum(W over the non-padded window)
        full = w_real.flatten(1).sum(1) * clip
        bias -= full
        if r.kind == "conv" and any(pads):
            ones = torch.ones(1, int(in_shape[1]), *in_shape[2:], dtype=torch.float64)
            inside = F.conv2d(F.pad(ones, _torch_padding(pads)), w_real, None, r.stride, 0, r.dilation, r.groups)
            border = (full.view(1, -1, 1, 1) - clip * inside).to(torch.float32).numpy()
    matmul = r.kind == "linear" and len(in_shape) != 2
    if r.w_bits <= MAX_INT_BITS:
        zp = np.zeros(c.shape, np.int8)
        w_inputs = [g.const(f"{hint}.w_q", q.T.copy() if matmul else q), g.const(f"{hint}.w_scale", c)]
        w = g.node("DequantizeLinear", [*w_inputs, g.const(f"{hint}.w_zp", zp)], f"{hint}.w", axis=1 if matmul else 0)
    else:
        wf = w_real.to(torch.float32).numpy()
        w = g.const(f"{hint}.weight", wf.T.copy() if matmul else wf)
    fusable = int_bias and rank1 is None and not (border is not None and np.any(border))
    if fusable and int_in and r.w_bits <= MAX_INT_BITS:  # int32 bias at s_x * s_w, as QLinearConv/QGemm take it
        b_scale = np.float32(s_x) * c
        b_q = np.round(bias.numpy() / b_scale.astype(np.float64)).astype(np.int32)
        b_inputs = [g.const(f"{hint}.b_q", b_q), g.const(f"{hint}.b_scale", b_scale), g.const(f"{hint}.b_zp", 0 * b_q)]
        b = g.node("DequantizeLinear", b_inputs, f"{hint}.b", axis=0)
    else:
        b = g.const(f"{hint}.bias", bias.to(torch.float32).numpy())
    if r.kind == "conv":
        attrs = dict(kernel_shape=list(r.kernel_size), strides=list(r.stride), pads=pads, dilations=list(r.dilation))
        y = g.node("Conv", [xin, w, b], hint, group=int(r.groups), **attrs)
    elif matmul:
        y = g.node("Add", [g.node("MatMul", [xin, w], f"{hint}.matmul"), b], hint)
    else:
        y = g.node("Gemm", [xin, w, b], hint, transB=1)
    if rank1 is not None:
        y = g.node("Add", [y, _rank1_term(g, xin, r, pads, rank1, hint)], f"{hint}.exact")
    if border is not None and np.any(border):
        y = g.node("Add", [y, g.const(f"{hint}.border", border)], f"{hint}.border_add")
    return activate(g, y, activation, hint)


def activate(g: GraphBuilder, y: str, activation: str | None, hint: str) -> str:
    """``relu`` / ``relu6`` / none on value ``y``."""
    if activation == "relu":
        return g.node("Relu", [y], f"{hint}.relu")
    if activation == "relu6":
        return g.node("Clip", [y, g.scalar("zero", 0.0), g.scalar("six", 6.0)], f"{hint}.relu6")
    return y
