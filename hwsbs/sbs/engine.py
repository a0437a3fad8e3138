"""The joint search: weights, clipping values and gate thresholds trained against CE + cost.

Loss (method section 4): ``CE + lambda * sum_k w_k * log R_k`` or, with a budget,
``CE + lambda * sum_k w_k * max(0, log(R_k / target_k))``. Several weighted cost objectives allow
multi-device searches (Pareto studies); the common case is one objective with weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cost_models.base import CostModel
from hwsbs.distributed import sync_gradients
from hwsbs.quant.weight_stats import clamp_layers
from hwsbs.task import count_correct, task_loss
from hwsbs.training import check_finite, make_sgd, split_decay

from .convert import SearchSpace
from .cost_term import CostTerm
from .curvature import CurvatureTerm
from .flip_probe import FlipProbe
from .steady_state import ChoiceRecorder
from .threshold_optim import CostGradientScale

__all__ = ["CostObjective", "SearchEngine", "log_cost_penalty", "step_stats"]


@dataclass
class CostObjective:
    """One hardware cost in the loss."""

    cost_model: CostModel  # prices a configuration on one device
    weight: float = 1.0  # relative weight of this device's log-cost
    target: float | None = None  # budget in the cost model's unit; None = plain log-cost


def log_cost_penalty(objectives: list[CostObjective], costs: list[Tensor]) -> Tensor:
    """``sum_k w_k log R_k``, with ``max(0, log(R_k / target_k))`` where a budget is set (float64)."""
    penalty = torch.zeros((), dtype=torch.float64)
    for obj, r in zip(objectives, costs):
        log_r = torch.log(r.clamp_min(1e-30))
        if obj.target is not None:
            log_r = torch.relu(log_r - math.log(obj.target))
        penalty = penalty + obj.weight * log_r
    return penalty


def step_stats(loss: Tensor, ce: Tensor, logits: Tensor, targets: Tensor, costs: list[Tensor]) -> dict[str, float]:
    """What a search step reports (SBS and the multipath baseline alike): its loss, cross-entropy,
    batch accuracy and primary cost."""
    right, n = count_correct(logits, targets)
    return {
        "loss": float(loss.detach()),
        "ce": float(ce.detach()),
        "acc": right / max(n, 1),
        "cost": float(costs[0].detach()) if costs else 0.0,
    }


class SearchEngine:
    """Owns the optimisers and performs search steps on a :class:`SearchSpace`."""

    def __init__(
        self,
        space: SearchSpace,
        objectives: list[CostObjective],
        lam: float,
        weight_lr: float,
        threshold_lr: float,
        weight_decay: float,
        cost_batch: int = 1,
        curvature: bool = False,
        flip_probe: int = 0,
    ) -> None:
        self.space = space
        # --curvature: the gates also see the Fisher curvature of each flip (see curvature.py)
        self.curvature = CurvatureTerm(space) if curvature else None
        # --flip-probe N: bit gates learn from measured flip differences (see flip_probe.py)
        self.flip_probe = FlipProbe(space, flip_probe) if flip_probe > 0 else None
        self.objectives = objectives
        self.lam = lam
        self.terms = [CostTerm(space, o.cost_model, cost_batch) for o in objectives]
        # Update families (alternate steps, method section 2) and, within each, the gate kinds
        # whose gradient scale is normalised together (see threshold_optim).
        kinds: dict[str, dict[str, list[nn.Parameter]]] = {"weight": {"w": [], "p": []}, "activation": {"a": []}}
        for _, layer in space.layers():
            for kind, param in layer.threshold_parameters().items():
                kinds["activation" if kind == "a" else "weight"][kind].append(param)
        excluded = {id(p) for fam in kinds.values() for ps in fam.values() for p in ps}
        decay, no_decay = split_decay(space.model, exclude=excluded)
        self.weight_optimizer = make_sgd(decay, no_decay, weight_lr, weight_decay)
        # One multi-tensor update per group, not ~5 Python-issued ops per parameter (on CPU torch
        # loops per tensor otherwise; the per-tensor arithmetic is the same, so are the results).
        for group in self.weight_optimizer.param_groups:
            group["foreach"] = True
        # Plain SGD in units of the cost gradient's scale (see threshold_optim): the balance
        # between cross-entropy and cost stays exact, and lambda sets how fast gates move.
        self.threshold_optimizers = {
            family: torch.optim.SGD([p for ps in groups.values() for p in ps], lr=threshold_lr, foreach=True)
            for family, groups in kinds.items()
            if any(groups.values())
        }
        self.family_kinds = {family: list(groups) for family, groups in kinds.items()}
        self.cost_scale = CostGradientScale({k: ps for groups in kinds.values() for k, ps in groups.items()})
        self.recorder = ChoiceRecorder()  # the configurations priced this epoch (the steady state)
        self.step_count = 0

    def cost_values(self) -> list[Tensor]:
        """Each objective's differentiable total cost for the latest forward."""
        return [term() for term in self.terms]

    def loss(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(total loss, cross-entropy, costs)`` for the latest forward."""
        ce = task_loss(logits, targets)
        costs = self.cost_values()
        penalty = self.penalty(costs)
        return ce + (self.lam * penalty).to(ce.device, ce.dtype), ce, costs

    def penalty(self, costs: list[Tensor]) -> Tensor:
        """The cost part of the loss without lambda (see :func:`log_cost_penalty`)."""
        return log_cost_penalty(self.objectives, costs)

    def step(self, x: Tensor, y: Tensor, where: str = "search") -> dict[str, float]:
        """One search step; weight and activation thresholds are updated on alternate steps."""
        self.space.model.train()
        family = "weight" if self.step_count % 2 == 0 else "activation"
        # The other family stays at its current choice: no gradient is even computed for it.
        frozen = [
            p
            for fam, opt in self.threshold_optimizers.items()
            if fam != family
            for group in opt.param_groups
            for p in group["params"]
        ]
        for p in frozen:
            p.requires_grad_(False)
        if self.flip_probe is not None and self.flip_probe.due(self.step_count):
            self.flip_probe.measure(x, y)  # before the forward: it overwrites the layers' last gates
        try:
            logits = self.space.model(x)
            ce = task_loss(logits, y)
            costs = self.cost_values()
            penalty = self.penalty(costs)
            loss = ce + (self.lam * penalty).to(ce.device, ce.dtype)
            if self.curvature is not None:  # zero in value: only the gates' gradients change
                loss = loss + self.curvature().to(ce.device, ce.dtype)
            check_finite(loss, where)
            self.weight_optimizer.zero_grad(set_to_none=True)
            for opt in self.threshold_optimizers.values():
                opt.zero_grad(set_to_none=True)
            kinds = self.family_kinds.get(family, [])
            self.cost_scale.observe(penalty, kinds)
            measured = self._measured_gate_grads(penalty, kinds)
            loss.backward()
            for p, g in measured:  # the bit thresholds: cost + measured differences, not the linear CE
                p.grad = g
            sync_gradients(self.space.model.parameters(), int(x.shape[0]))  # under torchrun: the global batch's
            self.cost_scale.rescale(kinds)
            if self.curvature is not None:
                self.curvature.observe(int(x.shape[0]))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        self.weight_optimizer.step()
        if family in self.threshold_optimizers:
            self.threshold_optimizers[family].step()
        clamp_layers([layer for _, layer in self.space.layers()])  # each layer's clamp_parameters()
        self.step_count += 1
        if self.terms:
            self.recorder.record(self.terms[0].last_choice)
        return step_stats(loss, ce, logits, y, costs)

    def _measured_gate_grads(self, penalty: Tensor, kinds: list[str]) -> list[tuple[nn.Parameter, Tensor]]:
        """With ``--flip-probe``: the bit thresholds' gradients of ``lambda * penalty`` plus the
        measured flip term (graph kept for the backward pass); empty otherwise."""
        if self.flip_probe is None:
            return []
        params = [p for k in kinds if k != "p" for p in self.cost_scale.kinds.get(k, []) if p.requires_grad]
        objective = self.lam * penalty + self.flip_probe.term()
        if not params or not objective.requires_grad:
            return [(p, torch.zeros_like(p)) for p in params]
        grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
        return [(p, torch.zeros_like(p) if g is None else g.to(p.dtype)) for p, g in zip(params, grads)]

    def state_dict(self) -> dict:
        return {
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "threshold_optimizers": {k: v.state_dict() for k, v in self.threshold_optimizers.items()},
            "step_count": self.step_count,
            "recorder": self.recorder.state_dict(),
            "cost_scale": self.cost_scale.state_dict(),
            **({"curvature": self.curvature.state_dict()} if self.curvature is not None else {}),
            **({"flip_probe": self.flip_probe.state_dict()} if self.flip_probe is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        for k, v in state["threshold_optimizers"].items():
            self.threshold_optimizers[k].load_state_dict(v)
        self.step_count = int(state["step_count"])
        if "recorder" in state:
            self.recorder.load_state_dict(state["recorder"])
        if "cost_scale" in state:
            self.cost_scale.load_state_dict(state["cost_scale"])
        if self.curvature is not None and "curvature" in state:
            self.curvature.load_state_dict(state["curvature"])
        if self.flip_probe is not None and "flip_probe" in state:
            self.flip_probe.load_state_dict(state["flip_probe"])
