"""How gate thresholds step: SGD on the loss, in units of the cost gradient's own scale.

Per-parameter Adam (what DARTS-style searches use) divides each threshold's gradient by its own
RMS, so every threshold whose gradient has a steady sign moves by the learning rate on every
step, whatever lambda and whatever the layer's share of the cost: all gates cross their
statistics on the same step, and lambda only decides whether they move at all. Plain SGD keeps
the balance between cross-entropy and cost exact, but its step depends on the model's size (the
number of gates sharing the log-cost) over orders of magnitude.

:class:`CostGradientScale` keeps plain SGD and divides the gradient of each gate kind (all weight
thresholds of the model, all activation thresholds, all pruning thresholds) by a running RMS of
the *cost part alone*, ``d(sum_k w_k log R_k)/d theta`` without lambda. Then a threshold that only
the cost pushes moves by about ``lr * lambda * (its share of the cost gradient) / RMS`` per update:
lambda sets the speed and the balance point, a layer whose cost matters more moves sooner, and the
same ``--threshold-lr`` suits any device, unit and model size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["CostGradientScale"]


class CostGradientScale:
    """Running RMS of the cost gradient per gate kind, and the rescaling of threshold gradients.

    Args:
        kinds: gate kind -> its thresholds (one tensor per layer).
        decay: EMA decay of the mean-square cost gradient.
    """

    def __init__(self, kinds: dict[str, Sequence[nn.Parameter]], decay: float = 0.9) -> None:
        self.kinds = {k: list(ps) for k, ps in kinds.items() if ps}
        self.decay = float(decay)
        self.mean_square: dict[str, float] = {k: 0.0 for k in self.kinds}  # EMA, 0 = not seen yet

    def observe(self, penalty: Tensor, active: Sequence[str]) -> None:
        """Update the RMS of ``d penalty / d theta`` for the ``active`` kinds (graph kept)."""
        kinds = [k for k in active if k in self.kinds]
        params = [p for k in kinds for p in self.kinds[k] if p.requires_grad]
        if not params or not penalty.requires_grad:
            return
        grads = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
        by_param = {id(p): g for p, g in zip(params, grads)}
        for k in kinds:
            found = [by_param.get(id(p)) for p in self.kinds[k]]
            gs = [g for g in found if g is not None]
            if not gs:
                continue
            flat = torch.cat([g.reshape(-1).double() for g in gs])
            ms = float(flat.pow(2).mean())
            if ms > 0:  # a budget met gives no cost gradient: keep the last scale
                prev = self.mean_square[k]
                self.mean_square[k] = ms if prev == 0 else self.decay * prev + (1 - self.decay) * ms

    @torch.no_grad()
    def rescale(self, active: Sequence[str]) -> None:
        """Divide the ``active`` kinds' threshold gradients by their cost-gradient RMS."""
        for k in active:
            ms = self.mean_square.get(k, 0.0)
            if ms <= 0:
                continue
            scale = 1.0 / ms**0.5
            for p in self.kinds[k]:
                if p.grad is not None:
                    p.grad.mul_(scale)

    def state_dict(self) -> dict[str, float]:
        return dict(self.mean_square)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean_square.update({k: float(v) for k, v in state.items() if k in self.mean_square})
