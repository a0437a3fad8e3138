"""Second-order flip differences for the bit gates: what lowering a width costs the loss *(hwsbs)*.

The cross-entropy reaches a bit gate ``g_j`` through the quantiser as a first-order term,
``dL/dg_j = grad . delta_j`` with ``delta_j`` the change of the quantised tensor when the gate
flips. Near a trained model the gradient is small while ``delta_j`` of a 2-bit grid is not, so the
first-order term under-prices low widths (issue 12: SBS drives weights to 2 bits where the ILP
baseline, which prices quantisation with the Fisher, keeps 4). With the diagonal empirical Fisher
``F`` (the Gauss-Newton Hessian of the mean loss: batch size x squared batch gradient, as the ILP
sensitivities use), the loss after a flip differs from the linear prediction by
``0.5 * sum F delta_j**2``, always upwards. So the flip difference the gate should see is

    L(g_j = 1) - L(g_j = 0)  ~  grad . delta_j  +  (1 - 2 g_j) * 0.5 * sum F delta_j**2

(from a closed gate, opening costs the curvature; from an open one, closing does). This module
adds the second part to the gates' gradient, as the cost term adds its flip differences: a term
``sum_j (g_j - sg(g_j)) * c_j`` that is zero in value. Weights use their elementwise Fisher;
activations (and both operands of an attention product) a per-layer mean Fisher of the quantised
tensor and the squared grid differences on the statistic's fixed sample. ``--curvature`` turns it
on; the default search is the paper's first-order one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hwsbs.quant.fused import ACT_STAT_SAMPLES, _grid, _sample_index
from hwsbs.quant.gates import flip_levels
from hwsbs.quant.layers import SBSLayerMixin
from hwsbs.quant.matmul import SBSMatmul

from .convert import SearchSpace

__all__ = ["CurvatureTerm", "probe_activation", "PROBE"]

#: The layer attribute that asks the activation quantiser to record what this term needs.
PROBE = "curvature_probe"


@torch.no_grad()
def probe_activation(layer: SBSLayerMixin, family: str, z: Tensor, scale: Tensor, out: Tensor) -> None:
    """Record, for one quantised activation, the mean squared grid differences on the statistic's
    sample, the element count and scale, and (by a gradient hook) its batch Fisher."""
    flat = z.detach().reshape(-1)
    if flat.numel() > ACT_STAT_SAMPLES:
        flat = flat.index_select(0, _sample_index(flat.numel(), ACT_STAT_SAMPLES, str(flat.device)))
    grids = [_grid(flat, b) for b in layer.bits]
    diffs = torch.stack([torch.stack([(a - b).pow(2).mean() for b in grids]) for a in grids])
    layer.__dict__[f"curvature_{family}"] = (diffs, z.numel(), scale.detach().float())
    if out.requires_grad:
        batch = out.shape[0] if out.dim() > 1 else 1

        def fisher(grad: Tensor) -> None:
            layer.__dict__[f"curvature_{family}_fisher"] = grad.detach().pow(2).mean() * batch

        out.register_hook(fisher)


class CurvatureTerm:
    """The gates' second-order flip differences (module docstring), and the Fisher it keeps."""

    def __init__(self, space: SearchSpace, momentum: float = 0.9) -> None:
        self.space = space
        self.momentum = float(momentum)
        self.layers = [(n, layer) for n, layer in space.layers() if not layer.pinned]
        self.weight_fisher: dict[str, Tensor] = {}  # EMA of batch x grad**2 of each layer's weight
        self.act_fisher: dict[tuple[str, str], Tensor] = {}  # EMA of the mean activation Fisher
        for _, layer in self.layers:
            layer.__dict__[PROBE] = probe_activation  # called by the activation quantiser

    def __call__(self) -> Tensor:
        """``sum_j (g_j - sg(g_j)) * (1 - 2 g_j) * 0.5 * sum F delta_j**2`` over the latest forward's gates."""
        total = torch.zeros((), dtype=torch.float64)
        for name, layer in self.layers:
            if layer.mode != "search":
                continue
            for family in ("w", "a"):
                gates = layer.last_w_gates if family == "w" else layer.last_a_gates
                if gates is None or (family == "w" and not layer.search_weight_bits):
                    continue
                curv = self._curvatures(name, layer, family, gates.detach().float().tolist())
                if curv is not None:
                    total = total + ((gates - gates.detach()).double().cpu() * curv).sum()
        return total

    def _curvatures(self, name: str, layer: SBSLayerMixin, family: str, hard: list[float]) -> Tensor | None:
        if family == "w" and not isinstance(layer, SBSMatmul):
            fisher = self.weight_fisher.get(name)
            return None if fisher is None else self._weight_curvatures(layer, fisher, hard)
        probe: Any = layer.__dict__.get(f"curvature_{family}")
        fisher_mean = self.act_fisher.get((name, family))
        if probe is None or fisher_mean is None:
            return None
        diffs, count, scale = probe
        per_diff = 0.5 * float(fisher_mean) * count * float(scale.pow(2).mean())
        out = [(1.0 - 2.0 * g) * per_diff * float(diffs[on, off]) for g, (on, off) in zip(hard, flip_levels(hard))]
        return torch.tensor(out, dtype=torch.float64)

    @torch.no_grad()
    def _weight_curvatures(self, layer: SBSLayerMixin, fisher: Tensor, hard: list[float]) -> Tensor:
        w_std, std = layer._search_standardised()
        v = layer._weight_range(w_std).detach()
        z = layer._normalise_weight(w_std, v)
        unit = 2.0 * std.detach() * v  # one step of z in weight units
        out = []
        for g, (on, off) in zip(hard, flip_levels(hard)):
            if on == off:
                out.append(0.0)
                continue
            delta = unit * (_grid(z, layer.bits[on]) - _grid(z, layer.bits[off]))
            out.append((1.0 - 2.0 * g) * 0.5 * float((fisher * delta.pow(2)).sum()))
        return torch.tensor(out, dtype=torch.float64)

    @torch.no_grad()
    def observe(self, batch: int) -> None:
        """After the backward pass: fold this step's weight and activation Fisher into the EMAs."""
        m = self.momentum
        for name, layer in self.layers:
            if not isinstance(layer, SBSMatmul) and layer.weight.grad is not None:
                f = layer.weight.grad.detach().pow(2) * batch
                prev = self.weight_fisher.get(name)
                self.weight_fisher[name] = f if prev is None else prev.mul_(m).add_(f, alpha=1 - m)
            for family in ("w", "a"):
                got = layer.__dict__.pop(f"curvature_{family}_fisher", None)
                if got is not None:
                    prev = self.act_fisher.get((name, family))
                    self.act_fisher[(name, family)] = got if prev is None else prev * m + got * (1 - m)

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """The Fisher estimates, for checkpoints (a resumed search continues with them)."""
        return {
            "weight": dict(self.weight_fisher),
            "activation": {f"{name}|{family}": f for (name, family), f in self.act_fisher.items()},
        }

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self.weight_fisher = dict(state.get("weight", {}))
        self.act_fisher = {tuple(k.rsplit("|", 1)): v for k, v in state.get("activation", {}).items()}  # type: ignore[misc]  # rsplit on one "|" gives a pair
