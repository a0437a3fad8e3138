"""Measured flip differences for the bit gates: the loss each width really costs *(hwsbs)*.

The paper's gates learn from the cross-entropy's straight-through gradient, ``dL/dg_j = grad .
delta_j``: the first-order prediction of ``L(g_j = 1) - L(g_j = 0)``. Near a trained model that
prediction is mostly noise (the gradient is small and uncorrelated with the grid change), while
the true difference of a 2-bit weight grid is not small: the search then lets the cost decide
alone and drives weights to 2 bits where a sensitivity-based assignment keeps 4 (issue 12).
A curvature term (``--curvature``) adds the Fisher's second-order part, and is of the order of the
first-order noise.

This module measures the difference instead. Every ``every`` search steps, on the first
``samples`` examples of the step's batch, in eval mode (batch-norm running statistics, the
activation statistics' running means: the model as it would be deployed now), it evaluates the
loss with one layer's weight (or activation) width forced to each candidate while every other
gate stays where it is: ``(bit widths - 1)`` forward passes per searched layer and family, no
backward. The differences to the unforced loss are smoothed over measurements (an EMA). In the
search step, the bit thresholds' gradient is then ``lambda * d(log-cost)/d theta`` plus
``sum_j D_j * dg_j/d theta`` (``D_j`` the measured ``L(g_j = 1) - L(g_j = 0)``, the surrogate's
``dg/d theta``): the straight-through form, with the measured difference in place of its linear
prediction. The pruning gates and every weight keep the usual gradient. ``--flip-probe N`` turns it
on; 0 keeps the paper's first-order gates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hwsbs.distributed import mean_over_ranks
from hwsbs.quant.gates import flip_levels
from hwsbs.quant.layers import SBSLayerMixin
from hwsbs.task import task_loss

from .convert import SearchSpace

__all__ = ["FlipProbe", "FORCE_OPEN", "FORCE_CLOSED"]

FORCE_OPEN = -1e9  # a threshold below every statistic: the gate is open
FORCE_CLOSED = 1e9  # above every statistic: closed


def _families(layer: SBSLayerMixin) -> list[str]:
    """The gate families this layer searches: weights unless pinned, activations unless float."""
    out = []
    if layer.search_weight_bits:
        out.append("w")
    if not layer.act_float:
        out.append("a")
    return out


class FlipProbe:
    """Measured per-width loss differences of every searched layer (module docstring).

    Args:
        space: the search space.
        every: measure every this many search steps (>= 1).
        samples: examples of the step's batch the measurement uses (>= 1).
        momentum: EMA weight of the previous measurements, in [0, 1).
    """

    def __init__(self, space: SearchSpace, every: int, samples: int = 64, momentum: float = 0.5) -> None:
        if every < 1 or samples < 1 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"FlipProbe: every={every}, samples={samples}, momentum={momentum} out of range")
        self.space = space
        self.every = int(every)
        self.samples = int(samples)
        self.momentum = float(momentum)
        self.entries = [(n, layer, f) for n, layer in space.layers() if not layer.pinned for f in _families(layer)]
        # (layer, family) -> loss at each candidate width minus the unforced loss (EMA)
        self.relative_loss: dict[str, Tensor] = {}
        self.measurements = 0

    def due(self, step: int) -> bool:
        """Whether the search step ``step`` (0-based) measures before it trains."""
        return bool(self.entries) and step % self.every == 0

    @torch.no_grad()
    def measure(self, x: Tensor, y: Tensor) -> None:
        """Evaluate every (layer, family, width) with the others unchanged; fold into the EMA."""
        model = self.space.model
        was_training = model.training
        model.eval()
        x, y = x[: self.samples], y[: self.samples]
        try:
            base = task_loss(model(x), y)
            rows = []
            for _, layer, family in self.entries:
                theta: nn.Parameter = getattr(layer, f"{family}_theta")
                saved = theta.detach().clone()
                levels = len(layer.bits)
                current = self._current_level(layer, family)
                row = []
                for k in range(levels):
                    if k == current:
                        row.append(torch.zeros((), device=base.device))
                        continue
                    theta.copy_(torch.tensor([FORCE_OPEN] * k + [FORCE_CLOSED] * (levels - 1 - k), device=theta.device))
                    row.append(task_loss(model(x), y) - base)
                theta.copy_(saved)
                rows.append(torch.stack(row))
        finally:
            model.train(was_training)
        measured = mean_over_ranks(torch.stack(rows).double().cpu())  # torchrun: every rank the same
        m = self.momentum if self.measurements else 0.0
        for (name, _, family), rel in zip(self.entries, measured):
            key = f"{name}|{family}"
            prev = self.relative_loss.get(key)
            self.relative_loss[key] = rel if prev is None else prev * m + rel * (1 - m)
        self.measurements += 1

    @staticmethod
    def _current_level(layer: SBSLayerMixin, family: str) -> int:
        w_bits, a_bits = layer.current_bits()
        return layer.bits.index(w_bits if family == "w" else a_bits)

    def differences(self, name: str, family: str, hard: list[float]) -> Tensor | None:
        """``D_j = L(g_j = 1) - L(g_j = 0)`` for each gate of one layer's family, from the EMA."""
        rel = self.relative_loss.get(f"{name}|{family}")
        if rel is None:
            return None
        return torch.stack([rel[on] - rel[off] for on, off in flip_levels(hard)])

    def term(self) -> Tensor:
        """``sum_j (g_j - sg(g_j)) * D_j`` over the latest forward's gates: zero in value, its
        gradient the measured straight-through one."""
        total = torch.zeros((), dtype=torch.float64)
        for name, layer, family in self.entries:
            if layer.mode != "search":
                continue
            gates = layer.last_w_gates if family == "w" else layer.last_a_gates
            if gates is None:
                continue
            diffs = self.differences(name, family, gates.detach().float().tolist())
            if diffs is not None:
                total = total + ((gates - gates.detach()).double().cpu() * diffs).sum()
        return total

    def level_losses(self) -> dict[str, list[float]]:
        """Each (layer|family)'s smoothed loss change per candidate width (for logs and tests)."""
        return {k: [float(v) for v in rel] for k, rel in self.relative_loss.items()}

    def state_dict(self) -> dict[str, object]:
        """The EMA, for checkpoints (a resumed search continues with it)."""
        return {"relative_loss": dict(self.relative_loss), "measurements": self.measurements}

    def load_state_dict(self, state: dict) -> None:
        self.relative_loss = {str(k): v for k, v in state.get("relative_loss", {}).items()}
        self.measurements = int(state.get("measurements", 0))
