"""A searched product of two activations: attention's Q K^T and P V *(hwsbs)*.

Both operands are activations, so both get the activation quantiser of method section 2 (a
learned clip, a residual statistic on a fixed sample, gates with learned thresholds). The first
operand uses the ``a`` gates and is priced at ``a_bits``; the second uses the ``w`` gates and is
priced at ``w_bits``, so every search method, cost model and config file treats a matmul as a
layer whose "weights" are its second operand. Nothing is pruned: the token and head dimensions
are not channels a producer can drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .fused import sampled_residuals
from .layers import SBSLayerMixin
from .scales import EPS, INPUT_PATH, MIN_CLIP, ActivationPath

__all__ = ["Matmul", "SBSMatmul"]

_FIRST = INPUT_PATH
_SECOND = ActivationPath("w", "weight_clip", "b_signed", "w_scale", "b_residual_ema")


class Matmul(nn.Module):
    """``torch.matmul(a, b)`` as a module, so conversion can find, trace and quantise it."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a, b)


class SBSMatmul(SBSLayerMixin, nn.Module):
    """``a @ b`` with SBS quantisation of both operands: ``a`` on the a-gates, ``b`` on the w-gates."""

    weight_clip: nn.Parameter  # the second operand's clip (the mixin's weight clip, reused)
    b_signed: Tensor
    b_residual_ema: Tensor

    def __init__(self, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float) -> None:
        nn.Module.__init__(self)
        self._init_sbs(bits, group_size, max_prune_fraction, tau)
        with torch.no_grad():
            self.weight_clip.fill_(1.0)  # calibrated on the first batch, as the input's clip
        self.register_buffer("b_signed", torch.tensor(False))
        self.register_buffer("b_residual_ema", torch.zeros(len(self.bits) - 1))

    @classmethod
    def from_module(
        cls, module: Matmul, bits: Sequence[int], group_size: int, max_prune_fraction: float, tau: float
    ) -> SBSMatmul:
        del module  # a Matmul has no state to take over
        return cls(bits, group_size, max_prune_fraction, tau)

    @property
    def weight(self) -> Tensor:  # type: ignore[override]  # the mixin declares a weight attribute
        raise AttributeError("an SBSMatmul has no weight: both operands are activations")

    # ---------------------------------------------------------------- forward
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if not self._host_flag("calibrated"):
            self._calibrate_operands(a, b)
        return torch.matmul(self._quantize_activation(a, _FIRST), self._quantize_activation(b, _SECOND))

    def quantized_operand(self, b: Tensor) -> Tensor:
        """The second operand as the product sees it in the current mode (its w-gates or fixed w_bits)."""
        return self._quantize_activation(b, _SECOND)

    @torch.no_grad()
    def _calibrate_operands(self, a: Tensor, b: Tensor) -> None:
        """Clip at the 99.9th percentile of |operand| and scale the statistics by their first values."""
        for x, path in ((a, _FIRST), (b, _SECOND)):
            getattr(self, path.signed).fill_(bool(x.min() < 0))
            flat = x.detach().abs().flatten().float()
            if flat.numel() > 200_000:  # a quantile of a sample is enough
                flat = flat[torch.randperm(flat.numel(), device=flat.device)[:200_000]]
            clip = float(torch.quantile(flat, 0.999)) if flat.numel() > 1 else float(flat.max())
            getattr(self, path.clip).fill_(max(clip, MIN_CLIP))
            z = self._normalise_act(x, getattr(self, path.clip), path.signed)
            stats = sampled_residuals(z, self.bits).clamp_min(EPS)
            getattr(self, path.scale).copy_(stats)
            getattr(self, path.ema).copy_(stats)
        self.calibrated.fill_(True)

    # ---------------------------------------------------------------- decisions
    def weight_statistics(self) -> Tensor:
        """The second operand's gate statistics (its running residuals over their calibration values)."""
        return self.b_residual_ema / self.w_scale

    def quantized_weight(self) -> Tensor:
        raise AttributeError("an SBSMatmul has no weight: both operands are activations")

    def extra_repr(self) -> str:
        state = f"mode={self.mode}, bits={self.bits}"
        if self.pinned or self.mode == "fixed":
            state += f", w/a={self.fixed_w_bits}/{self.fixed_a_bits}"
        return state
