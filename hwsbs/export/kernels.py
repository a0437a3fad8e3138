"""Integer kernels: ``y = gamma * S + beta`` with ``S = sum(u * n)`` computed exactly in integers.

Two back-ends, both exact (int32 accumulation):

* ``onednn`` (CPU): ``torch.ops.onednn.qconv_pointwise`` / ``qlinear_pointwise``, the u8 x s8
  kernels PyTorch's x86 inductor quantisation uses, with a float32 output (no requantisation),
  grouped and depthwise convolutions included. Weights are prepacked once. On x86 CPUs without
  VNNI they add pairs of products in saturating int16 (see :func:`onednn_saturates`), so the
  exporter only sends bit pairs there that cannot saturate.
* ``intmm`` (CUDA, or CPU on request): ``torch._int_mm`` (int8 x int8 -> int32); convolutions
  through im2col (``F.unfold``); grouped convolutions are not supported. CUDA needs M > 16 and
  K, N multiples of 8: operands are zero-padded to that (zeros add nothing to a dot product).

Every kernel takes the integer input levels ``u`` as a float tensor of whole numbers (0..255).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .encoding import odd_weights

__all__ = [
    "BACKENDS",
    "onednn_available",
    "onednn_saturates",
    "resolve_backend",
    "IntKernel",
    "OneDNNKernel",
    "IntMMKernel",
    "build_kernel",
    "pad_for_int_mm",
]

#: Integer back-ends by name; ``auto`` picks per device (see :func:`resolve_backend`).
BACKENDS = ("auto", "onednn", "intmm", "float")


def onednn_available() -> bool:
    """True when this PyTorch build has the oneDNN int8 ops with float output."""
    ops = torch.ops.onednn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("qconv_pointwise", "qconv_prepack", "qlinear_pointwise", "qlinear_prepack")
    )


@functools.cache
def onednn_saturates() -> bool:
    """Probe once whether the oneDNN u8 x s8 kernels saturate int16 pair sums on this CPU.

    With AVX-512/AVX VNNI (VPDPBUSD) products go straight into int32; without it (AVX2
    VPMADDUBSW) two adjacent products are added in a saturating int16. A probe beats reading
    CPU flags: it checks the kernel oneDNN really dispatches.
    """
    if not onednn_available():
        return False
    u = torch.full((1, 16, 1, 1), 255, dtype=torch.uint8)
    w = torch.full((1, 16, 1, 1), -128, dtype=torch.int8)
    one = torch.ones(1)
    zero = torch.zeros(1, dtype=torch.long)
    packed = torch.ops.onednn.qconv_prepack(w, one, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, None)
    out = torch.ops.onednn.qconv_pointwise(
        u, 1.0, 0, packed, one, zero, None, [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], ""
    )
    return float(out.flatten()[0]) != -255.0 * 128.0 * 16.0


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """The integer back-end to use: ``auto`` is oneDNN on CPU (``intmm`` without it), ``intmm`` on CUDA."""
    dev = torch.device(device)
    if requested == "auto":
        if dev.type == "cuda":
            return "intmm"
        return "onednn" if onednn_available() else "intmm"
    if requested == "onednn" and (dev.type != "cpu" or not onednn_available()):
        from hwsbs.errors import ConfigError

        raise ConfigError(f"--kernel onednn: not available on {dev} with this PyTorch build")
    if requested not in BACKENDS:
        from hwsbs.errors import ConfigError

        raise ConfigError(f"--kernel: expected one of {', '.join(BACKENDS)}, got {requested!r}")
    return requested


class IntKernel:
    """Shared state: the affine epilogue ``gamma * S + beta`` and the conv geometry."""

    def __init__(
        self,
        codes: Tensor,
        doubled: bool,
        gamma: Tensor,
        beta: Tensor,
        *,
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] = (0, 0),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
        a_bits: int = 8,
    ) -> None:
        self.conv = codes.dim() == 4
        self.out_channels = int(codes.shape[0])
        self.doubled = doubled
        self.stride = [int(s) for s in stride]
        self.padding = [int(p) for p in padding]
        self.dilation = [int(d) for d in dilation]
        self.groups = int(groups)
        self.a_bits = int(a_bits)
        self.kernel_size = tuple(codes.shape[2:]) if self.conv else (1, 1)
        self.gamma = gamma.to(torch.float32).contiguous()
        self.beta = beta.to(torch.float32).contiguous()

    def __call__(self, u: Tensor) -> Tensor:
        raise NotImplementedError


class OneDNNKernel(IntKernel):
    """oneDNN u8 x s8 convolution / linear with a float32 output."""

    scalars: list[float]  # the post-op's scalars (hardtanh bounds)

    def __init__(self, codes: Tensor, doubled: bool, gamma: Tensor, beta: Tensor, **geometry) -> None:
        super().__init__(codes, doubled, gamma, beta, **geometry)
        self.w_scale = (self.gamma * (2.0 if doubled else 1.0)).contiguous()
        self.w_zp = torch.zeros(codes.shape[0], dtype=torch.long)
        # 8-bit weights (n = 2 code + 1) also need sum(u) over each output's receptive field,
        # added as gamma * sum(u). Sums of levels stay below 2^24, so float32 computes them
        # exactly: over channels first, then one single-channel box filter (groups == 1).
        self.box_weight: Tensor | None = None
        if doubled and self.conv:
            shape = (1, 1, *self.kernel_size) if self.groups == 1 else tuple(codes.shape)
            self.box_weight = torch.ones(shape, dtype=torch.float32)
        self.gamma_view = self.gamma.view(1, -1, 1, 1) if self.conv else self.gamma
        self.attr, self.scalars = "none", []  # oneDNN post-op (a fused ReLU / ReLU6)
        if self.conv:
            self.packed = torch.ops.onednn.qconv_prepack(
                codes.contiguous(),
                torch.ones(codes.shape[0]),
                1.0,
                0,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
                None,
            )
        else:
            self.packed = torch.ops.onednn.qlinear_prepack(codes.contiguous(), None)

    def fuse_post_op(self, activation: str) -> bool:
        """Apply ``relu``/``relu6`` inside the kernel; False when an epilogue follows the kernel."""
        if self.doubled:
            return False
        if activation == "relu":
            self.attr, self.scalars = "relu", []
        else:
            self.attr, self.scalars = "hardtanh", [0.0, 6.0]
        return True

    def _receptive_sum(self, u: Tensor) -> Tensor:
        if not self.conv:
            return u.sum(-1, keepdim=True)
        assert self.box_weight is not None
        if self.groups == 1:
            u = u.sum(1, keepdim=True)
        return F.conv2d(
            u, self.box_weight, None, self.stride, self.padding, self.dilation, 1 if self.groups == 1 else self.groups
        )

    def __call__(self, u: Tensor) -> Tensor:
        q = _as_uint8(u, self.a_bits)
        if self.conv:
            q = q.contiguous(memory_format=torch.channels_last)
            out = torch.ops.onednn.qconv_pointwise(
                q,
                1.0,
                0,
                self.packed,
                self.w_scale,
                self.w_zp,
                self.beta,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
                1.0,
                0,
                torch.float32,
                self.attr,
                self.scalars,
                "",
            )
        else:
            out = torch.ops.onednn.qlinear_pointwise(
                q.contiguous(),
                1.0,
                0,
                self.packed,
                self.w_scale,
                self.w_zp,
                self.beta,
                1.0,
                0,
                torch.float32,
                self.attr,
                self.scalars,
                "",
            )
        if self.doubled:
            return out.addcmul_(self.gamma_view, self._receptive_sum(u))  # the kernel output is fresh
        return out


def _as_uint8(u: Tensor, bits: int) -> Tensor:
    """Float levels to uint8. PyTorch's float -> uint8 cast is scalar code on CPU (several times
    slower than float -> int8), so the cast goes through int8 and a reinterpreting view."""
    if bits < 8:
        return u.to(torch.int8).view(torch.uint8)
    q = (u - 128.0).to(torch.int8).view(torch.uint8)
    return q.bitwise_xor_(128)  # (j - 128) mod 256 with the top bit flipped is j


def pad_for_int_mm(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-pad ``a`` (M x K) and ``b`` (K x N) to M > 16 and K, N multiples of 8 (CUDA _int_mm)."""
    m, k = a.shape
    n = b.shape[1]
    pm, pk, pn = max(17 - m, 0), (-k) % 8, (-n) % 8
    if pm or pk:
        a = F.pad(a, (0, pk, 0, pm))
    if pk or pn:
        b = F.pad(b, (0, pn, 0, pk))
    return a.contiguous(), b.contiguous()


class IntMMKernel(IntKernel):
    """``torch._int_mm`` (int8 x int8 -> int32), convolutions via im2col; groups must be 1."""

    def __init__(self, codes: Tensor, doubled: bool, gamma: Tensor, beta: Tensor, **geometry) -> None:
        super().__init__(codes, doubled, gamma, beta, **geometry)
        if self.groups != 1:
            raise ValueError("the intmm kernel has no grouped convolution")
        flat = codes.reshape(codes.shape[0], -1)
        self.k = int(flat.shape[1])
        self.w = flat.t().contiguous()  # K x N int8
        if codes.device.type == "cuda":  # padded once here; inputs are padded per call
            self.w = pad_for_int_mm(flat.new_zeros(17, self.k), self.w)[1]
        # 8-bit levels (0..255) do not fit int8: a = u - 128, which adds 128 * sum(n) per output
        # channel (padded positions have u = 0, a = -128, and still contribute 0 in total).
        self.offset = 128 if self.a_bits == 8 else 0
        self.colsum = odd_weights(flat, doubled).sum(1).to(torch.int32)

    def _mm(self, a: Tensor) -> Tensor:
        if a.device.type != "cuda":  # the CPU kernel takes any shape
            return torch._int_mm(a, self.w)
        m, k = a.shape
        a = F.pad(a, (0, self.w.shape[0] - k, 0, max(17 - m, 0)))
        return torch._int_mm(a, self.w)[:m, : self.out_channels]

    def __call__(self, u: Tensor) -> Tensor:
        if self.conv:
            batch = u.shape[0]
            h, w = u.shape[-2:]
            # unfold takes int lists at runtime; its stub asks for tuples
            cols = F.unfold(
                u,
                self.kernel_size,
                self.dilation,  # type: ignore[arg-type]  # a list[int], see above
                self.padding,  # type: ignore[arg-type]  # a list[int], see above
                self.stride,  # type: ignore[arg-type]  # a list[int], see above
            )  # B x K x L
            oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
            ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
            a_f = cols.transpose(1, 2).reshape(-1, self.k)
        else:
            a_f = u
        offset = self.offset
        a = (a_f - offset).to(torch.int8) if offset else a_f.to(torch.int8)
        acc = self._mm(a)
        if self.doubled:
            acc = 2 * acc + a.sum(1, keepdim=True, dtype=torch.int32)
        if offset:
            acc = acc + offset * self.colsum
        y = acc.to(torch.float32) * self.gamma + self.beta
        if self.conv:
            return y.view(batch, oh, ow, self.out_channels).permute(0, 3, 1, 2)
        return y


def build_kernel(backend: str, codes: Tensor, doubled: bool, gamma: Tensor, beta: Tensor, **geometry) -> IntKernel:
    """The kernel object for ``backend`` (``onednn`` or ``intmm``)."""
    if backend == "onednn":
        return OneDNNKernel(codes, doubled, gamma, beta, **geometry)
    if backend == "intmm":
        return IntMMKernel(codes, doubled, gamma, beta, **geometry)
    raise ValueError(f"no integer kernel for back-end {backend!r}")
