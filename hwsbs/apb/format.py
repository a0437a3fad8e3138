"""APB's weight rule with a straight-through surrogate, and APB state on an SBS layer.

A weight ``w`` of a layer with scale ``alpha > 0`` and band half-width ``delta > 0`` is binary,
``sign(w) * alpha``, when ``|(|w| - alpha) / delta| < 1``, and kept in full precision otherwise.

Surrogate (backward only; the forward is the hard rule exactly): the binary share of a weight is
``s = sigmoid((1 - |u|) / tau)`` with ``u = (|w| - alpha) / delta``, and the soft weight
``s * sign(w) * alpha + (1 - s) * w`` gives alpha's and delta's gradients. The latent weight gets
the identity (straight-through) gradient, binary or not.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn

from hwsbs.quant.layers import SBSConv2d, SBSLayerMixin, SBSLinear

__all__ = [
    "APB_TAU",
    "apb_weight",
    "band_mask",
    "fp_count",
    "soft_fp_count",
    "make_apb_layer",
    "is_apb_layer",
    "restore_apb_layers",
]

#: Temperature of the band surrogate, in units of ``|u|`` (1 = the band's half-width).
APB_TAU = 0.25


def band_mask(w: Tensor, alpha: Tensor, delta: Tensor) -> Tensor:
    """True where ``w`` is binary: ``|(|w| - alpha) / delta| < 1``."""
    return ((w.abs() - alpha) / delta).abs() < 1.0


def _binary_share(w: Tensor, alpha: Tensor, delta: Tensor, tau: float) -> Tensor:
    return torch.sigmoid((1.0 - ((w.abs() - alpha) / delta).abs()) / tau)


def soft_weight(w: Tensor, alpha: Tensor, delta: Tensor, tau: float = APB_TAU) -> Tensor:
    """The surrogate whose derivatives in alpha and delta the backward pass uses (``w`` fixed)."""
    s = _binary_share(w, alpha, delta, tau)
    return s * torch.sign(w) * alpha + (1.0 - s) * w


def apb_weight(w: Tensor, alpha: Tensor, delta: Tensor, tau: float = APB_TAU, mask: Tensor | None = None) -> Tensor:
    """The APB weight: exactly ``sign(w) * alpha`` inside the band, ``w`` outside.

    Args:
        w: latent full-precision weights (gradient: straight-through identity).
        alpha: the layer's binary magnitude (scalar tensor).
        delta: the band's half-width (scalar tensor); with ``mask`` given it gets no gradient.
        tau: surrogate temperature.
        mask: a frozen binary mask (fine-tuning, export) instead of the band rule.
    """
    wd = w.detach()
    sign = torch.where(wd >= 0, 1.0, -1.0).to(w.dtype)  # sign(0) = +1: every weight has a bit
    if mask is not None:  # frozen: alpha's gradient is sum(mask * sign * grad)
        return torch.where(mask, sign * alpha, w)
    hard = torch.where(band_mask(wd, alpha.detach(), delta.detach()), sign * alpha.detach(), wd)
    soft = soft_weight(wd, alpha, delta, tau)
    return hard + (soft - soft.detach()) + (w - wd)


def fp_count(w: Tensor, alpha: Tensor, delta: Tensor) -> int:
    """Weights outside the band (kept in full precision)."""
    return int((~band_mask(w.detach(), alpha.detach(), delta.detach())).sum())


def soft_fp_count(w: Tensor, alpha: Tensor, delta: Tensor, tau: float = APB_TAU) -> Tensor:
    """The surrogate count ``sum(1 - s)``, differentiable in alpha and delta."""
    return (1.0 - _binary_share(w.detach(), alpha, delta, tau)).sum()


# ---------------------------------------------------------------------------- APB on an SBS layer
def _apb_params(layer: SBSLayerMixin) -> tuple[Tensor, Tensor]:
    mod: Any = layer
    return mod.apb_log_alpha.exp(), mod.apb_log_delta.exp()


def _quantized_weight(self: Any) -> Tensor:
    """APB weights in place of the layer's uniform quantiser (search and fixed mode alike)."""
    alpha, delta = _apb_params(self)
    mask = self.apb_mask if bool(self.apb_frozen) else None
    return apb_weight(self.weight, alpha, delta, APB_TAU, mask)


@torch.no_grad()
def _freeze(self: Any) -> None:
    """Fix the binary mask as it stands (the configuration's full-precision count stays exact)."""
    alpha, delta = _apb_params(self)
    self.apb_mask.copy_(band_mask(self.weight, alpha, delta))
    self.apb_frozen.fill_(True)


def make_apb_layer(layer: SBSLayerMixin, init_fp: float = 0.05) -> None:
    """Give ``layer`` APB weights in place: alpha = mean |w|, delta so that ``init_fp`` of the
    weights start outside the band. Parameters are stored as logs (positive, relative steps).

    The layer object is kept (its activation quantiser, calibration and pruning links stay
    valid): only its ``quantized_weight`` is replaced, on the instance.
    """
    mod: Any = layer
    w = layer.weight.detach()
    alpha = w.abs().mean().clamp_min(1e-8)
    dist = (w.abs() - alpha).abs().flatten().float()
    delta = torch.quantile(dist, 1.0 - init_fp) if dist.numel() > 1 else dist.max()
    delta = delta.clamp_min(1e-3 * float(alpha)) * (1.0 + 1e-6)
    mod.apb_log_alpha = nn.Parameter(alpha.log().reshape(()))
    mod.apb_log_delta = nn.Parameter(delta.log().reshape(()).to(w.dtype))
    mod.register_buffer("apb_mask", torch.ones_like(w, dtype=torch.bool))
    mod.register_buffer("apb_frozen", torch.tensor(False))
    mod.quantized_weight = types.MethodType(_quantized_weight, layer)
    mod.apb_freeze = types.MethodType(_freeze, layer)


def is_apb_layer(layer: nn.Module) -> bool:
    """True for a layer :func:`make_apb_layer` converted."""
    return isinstance(layer, SBSConv2d | SBSLinear) and hasattr(layer, "apb_log_alpha")


def apb_alpha_delta(layer: Any) -> tuple[Tensor, Tensor]:
    """(alpha, delta) of an APB layer."""
    return _apb_params(layer)


def restore_apb_layers(model: nn.Module, state: dict[str, Any]) -> list[str]:
    """Make APB again the layers of ``model`` whose saved ``state`` holds APB parameters, so a
    strict load of a checkpoint taken inside an APB search or its fine-tuning succeeds (the
    loaded alpha, delta, mask and frozen flag replace the initial ones). Returns their names."""
    names = [key[: -len(".apb_log_alpha")] for key in state if key.endswith(".apb_log_alpha")]
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, SBSConv2d | SBSLinear) and not is_apb_layer(layer):
            make_apb_layer(layer)
    return names
