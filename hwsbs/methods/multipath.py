"""The multi-path differentiable baseline (DNAS / EdMIPS): one quantised path per candidate width.

Each searchable layer computes with ``sum_i softmax(beta_w)_i Q_bi(w)`` and
``sum_j softmax(beta_a)_j Q_bj(x)``: the same full-precision weights (and inputs) quantised
separately at every candidate bit width, each path with its own clipping value, mixed by softmax
weights over learnable logits. The cost is the expectation under those softmaxes,
``E[R] = sum_l sum_ij p_w,i p_a,j T_l[i, j]``, with ``T_l`` the same tables SBS's
:class:`~hwsbs.sbs.cost_term.CostTerm` builds (the cost model called on discrete states), so it is
differentiable through the softmax for any cost model. Loss: ``CE + lambda * log E[R]`` (or the
budget form with ``--target``), weights by SGD, logits by Adam (``extra["arch_lr"]``, default
``--threshold-lr``). The derived configuration is the argmax of each softmax; it does not prune.

This is the search SBS's cost claim is measured against: K forward paths per layer cost K times
the quantisation work and keep K sets of quantised tensors for the backward pass.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cost_models.base import LayerState
from hwsbs.distributed import sync_gradients
from hwsbs.quant.layers import SBSConv2d, SBSLayerMixin, SBSLinear
from hwsbs.quant.matmul import SBSMatmul
from hwsbs.quant.quantizer import quantize, step_size
from hwsbs.quant.scales import LAYER_SETTINGS, grad_scale
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision
from hwsbs.sbs.convert import SearchSpace, set_submodule
from hwsbs.sbs.cost_term import CostTerm
from hwsbs.sbs.engine import CostObjective, log_cost_penalty, step_stats
from hwsbs.task import task_loss
from hwsbs.training import check_finite, make_sgd, split_decay

from .base import MethodContext, register_method, run_search_epochs

__all__ = ["MULTIPATH_MODE", "PathParameters", "MultiPathConv2d", "MultiPathLinear", "MultiPathSearch", "multipath"]

MULTIPATH_MODE = "multipath"


class PathParameters(nn.Module):
    """One layer's architecture logits and per-path clipping values."""

    def __init__(self, k: int, w_clip: float, a_clip: float) -> None:
        super().__init__()
        self.beta_w = nn.Parameter(torch.zeros(k))  # weight-width logits (uniform start)
        self.beta_a = nn.Parameter(torch.zeros(k))  # activation-width logits
        self.w_clips = nn.Parameter(torch.full((k,), float(w_clip)))  # v_w per path
        self.a_clips = nn.Parameter(torch.full((k,), float(a_clip)))  # v_x per path


if TYPE_CHECKING:  # the mixin is only ever combined with an SBS layer: type it as one
    _SBSLayerBase = SBSLayerMixin
else:
    _SBSLayerBase = object


class _MultiPathMixin(_SBSLayerBase):
    """Multi-path forward for an SBS layer; in every other mode the SBS layer's own forward runs.

    The path parameters are kept out of the module's registered parameters on purpose: the
    model's state_dict then stays that of the SBS model, so the pipeline's checkpoints and resume
    work unchanged, and the search checkpoints the path parameters itself.
    """

    @property
    def paths(self) -> PathParameters:
        return self.__dict__["_paths"]

    def attach_paths(self, paths: PathParameters) -> None:
        self.__dict__["_paths"] = paths
        self.mode = MULTIPATH_MODE

    def _multipath_active(self) -> bool:
        return self.mode == MULTIPATH_MODE and not self.pinned

    def multipath_weight(self) -> Tensor:
        w_std, std = self._standardise(self.weight)
        probs = F.softmax(self.paths.beta_w, 0)
        mixed = torch.zeros_like(w_std)
        for i, b in enumerate(self.bits):
            v = grad_scale(self.paths.w_clips[i], 1.0 / math.sqrt(self.weight.numel() * (2**b - 1)))
            z = (torch.clamp(w_std / v, -1.0, 1.0) + 1.0) / 2.0
            mixed = mixed + probs[i] * v * (2.0 * quantize(z, step_size(b)) - 1.0)
        return std * mixed

    def multipath_input(self, x: Tensor) -> Tensor:
        probs = F.softmax(self.paths.beta_a, 0)
        per_sample = max(x[0].numel(), 1) if x.dim() > 1 else x.numel()
        mixed = torch.zeros_like(x)
        for i, b in enumerate(self.bits):
            v = grad_scale(self.paths.a_clips[i], 1.0 / math.sqrt(per_sample * (2**b - 1)))
            z = self._normalise_act(x, v)
            mixed = mixed + probs[i] * self._denormalise_act(quantize(z, step_size(b)), v)
        return mixed

    def chosen_bits(self) -> tuple[int, int]:
        """The argmax path for weights and for activations."""
        return self.bits[int(self.paths.beta_w.argmax())], self.bits[int(self.paths.beta_a.argmax())]

    @torch.no_grad()
    def commit(self) -> tuple[int, int]:
        """Keep the argmax paths' clipping values for fixed-mode fine-tuning; returns their bits."""
        i, j = int(self.paths.beta_w.argmax()), int(self.paths.beta_a.argmax())
        self.weight_clip.copy_(self.paths.w_clips[i])
        self.act_clip.copy_(self.paths.a_clips[j])
        return self.bits[i], self.bits[j]


class MultiPathConv2d(_MultiPathMixin, SBSConv2d):
    """An SBS Conv2d that, in ``multipath`` mode, mixes one quantised path per bit width."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._multipath_active():
            return super().forward(x)
        self._maybe_calibrate(x)
        return self._conv_forward(self.multipath_input(x), self.multipath_weight(), self.bias)


class MultiPathLinear(_MultiPathMixin, SBSLinear):  # type: ignore[misc]  # Linear.bias typed Parameter, may be None
    """An SBS Linear that, in ``multipath`` mode, mixes one quantised path per bit width."""

    def forward(self, x: Tensor) -> Tensor:
        if not self._multipath_active():
            return super().forward(x)
        self._maybe_calibrate(x)
        return F.linear(self.multipath_input(x), self.multipath_weight(), self.bias)


def to_multipath(layer: SBSLayerMixin) -> MultiPathConv2d | MultiPathLinear:
    """A multi-path copy of an SBS layer (same weights, clipping values and calibration)."""
    cls = MultiPathConv2d if isinstance(layer, SBSConv2d) else MultiPathLinear
    new = cast(  # from_module builds an instance of cls
        "MultiPathConv2d | MultiPathLinear",
        cls.from_module(layer, layer.bits, layer.group_size, layer.max_prune_fraction, layer.tau),  # type: ignore[arg-type]  # an SBSConv2d is a Conv2d, an SBSLinear a Linear
    )
    new.load_state_dict(cast(nn.Module, layer).state_dict())  # an SBS layer is an nn.Module
    for attr in LAYER_SETTINGS:
        setattr(new, attr, getattr(layer, attr))
    new.attach_paths(
        PathParameters(len(layer.bits), float(layer.weight_clip.detach()), float(layer.act_clip.detach())).to(
            layer.weight.device
        )
    )
    return new


class MultiPathSearch:
    """Wraps a space's searchable layers in multi-path layers and performs search steps."""

    def __init__(
        self,
        space: SearchSpace,
        objectives: list[CostObjective],
        lam: float,
        weight_lr: float,
        arch_lr: float,
        weight_decay: float,
        cost_batch: int = 1,
    ) -> None:
        self.space = space
        self.objectives = objectives
        self.lam = lam
        self.searched: list[str] = []
        self.paths = nn.ModuleDict()
        for name, layer in space.layers():
            if isinstance(layer, SBSMatmul) and not layer.pinned:
                # multipath has paths for weights and inputs, not for a product of two activations
                layer.set_fixed(layer.fixed_w_bits, layer.fixed_a_bits)
                warnings.warn(
                    f"multipath: {name} (an attention product) stays at {layer.fixed_w_bits}/{layer.fixed_a_bits} bits",
                    stacklevel=2,
                )
            if layer.pinned or isinstance(layer, SBSMatmul):
                continue
            new = to_multipath(layer)
            set_submodule(space.model, name, new)
            self.paths[_key(name)] = new.paths
            self.searched.append(name)
        self.tables: list[list[Tensor]] = []  # [objective][searched layer] -> T[i, j]
        self.constants: list[float] = []  # cost of the pinned layers, per objective
        for obj in objectives:
            term = CostTerm(space, obj.cost_model, cost_batch)
            tabs, const = [], 0.0
            for name, layer in space.layers():
                shape = space.shapes[name]
                if name in self.searched:
                    tabs.append(term.cost_table(name, shape.in_channels, shape.out_channels, layer.bits, layer.bits))
                else:
                    state = LayerState(layer.fixed_w_bits, layer.fixed_a_bits, shape.in_channels, shape.out_channels)
                    const += float(obj.cost_model.layer_cost(shape, state, cost_batch))
            self.tables.append(tabs)
            self.constants.append(const)
        path_modules = [cast(PathParameters, m) for m in self.paths.values()]  # all it holds
        arch = [p for m in path_modules for p in (m.beta_w, m.beta_a)]
        clips = [p for m in path_modules for p in (m.w_clips, m.a_clips)]
        decay, no_decay = split_decay(space.model)
        self.weight_optimizer = make_sgd(decay, no_decay + clips, weight_lr, weight_decay)
        self.arch_optimizer = torch.optim.Adam(arch, lr=arch_lr, betas=(0.9, 0.999))
        self.step_count = 0

    def expected_costs(self) -> list[Tensor]:
        """``E[R]`` per objective (float64), differentiable w.r.t. every layer's logits."""
        out = []
        for tabs, const in zip(self.tables, self.constants):
            total = torch.tensor(const, dtype=torch.float64)
            for name, table in zip(self.searched, tabs):
                p = cast(PathParameters, self.paths[_key(name)])
                p_w = F.softmax(p.beta_w.double(), 0).cpu()
                p_a = F.softmax(p.beta_a.double(), 0).cpu()
                total = total + p_w @ table @ p_a
            out.append(total)
        return out

    def loss(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(CE + lambda * sum_k w_k log E[R_k], CE, E[R_k])``; budget form where a target is set."""
        ce = task_loss(logits, targets)
        costs = self.expected_costs()
        penalty = log_cost_penalty(self.objectives, costs)
        return ce + (self.lam * penalty).to(ce.device, ce.dtype), ce, costs

    def step(self, x: Tensor, y: Tensor, where: str = "multipath search") -> dict[str, float]:
        """One joint step of weights, clipping values (SGD) and logits (Adam)."""
        self.space.model.train()
        logits = self.space.model(x)
        loss, ce, costs = self.loss(logits, y)
        check_finite(loss, where)
        self.weight_optimizer.zero_grad(set_to_none=True)
        self.arch_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(  # under torchrun: the global batch's gradient
            [p for opt in (self.weight_optimizer, self.arch_optimizer) for g in opt.param_groups for p in g["params"]],
            int(x.shape[0]),
        )
        self.weight_optimizer.step()
        self.arch_optimizer.step()
        with torch.no_grad():
            for m in self.paths.values():
                path = cast(PathParameters, m)
                path.w_clips.clamp_(min=1e-3)
                path.a_clips.clamp_(min=1e-3)
        self.step_count += 1
        return step_stats(loss, ce, logits, y, costs)

    def derive(self) -> list[LayerDecision]:
        """Argmax bits per layer (pinned layers keep theirs); commits the chosen paths' clips."""
        bits = {}
        for name, layer in self.space.layers():
            if name in self.searched:
                searched = cast("MultiPathConv2d | MultiPathLinear", layer)  # wrapped in __init__
                bits[name] = searched.commit()
            else:
                bits[name] = (layer.fixed_w_bits, layer.fixed_a_bits)
        return self.space.decisions(bits, {})

    def state_dict(self) -> dict:
        return {
            "paths": self.paths.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "step_count": self.step_count,
        }

    def load_state_dict(self, state: dict) -> None:
        self.paths.load_state_dict(state["paths"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.step_count = int(state["step_count"])


def _key(name: str) -> str:
    return name.replace(".", "/")  # ModuleDict keys cannot contain dots


@register_method(
    "multipath", prunes=False, description="DNAS/EdMIPS: softmax over one quantised path per bit width, expected cost"
)
def multipath(ctx: MethodContext) -> CompressionConfig:
    """Train weights and path logits jointly for ``--search-epochs``, then take each argmax."""
    cfg = ctx.config
    arch_lr = float(ctx.extra.get("arch_lr", cfg.threshold_lr))
    search = MultiPathSearch(
        ctx.space, ctx.objectives, cfg.lam, cfg.search_lr, arch_lr, cfg.weight_decay, cfg.cost_batch
    )
    if ctx.resume_state is not None:
        search.load_state_dict(ctx.resume_state["multipath"])
    run_search_epochs(ctx, search.step, lambda: {"multipath": search.state_dict()}, "multipath search")
    return ctx.make_config(search.derive())
