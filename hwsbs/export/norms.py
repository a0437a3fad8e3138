"""Batch-norms an export folds into the convolution before them (eval statistics)."""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, fx, nn

from hwsbs.quant.layers import SBSLayerMixin

__all__ = ["foldable_norms"]


class _SBSLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, SBSLayerMixin) or super().is_leaf_module(m, module_qualified_name)


def foldable_norms(model: nn.Module) -> dict[str, str]:
    """``{conv name: batch-norm name}`` where a BatchNorm2d (eval statistics) is the only reader
    of a convolution's output and runs once; {} when torch.fx cannot trace the model."""
    try:
        graph = _SBSLeafTracer().trace(model)
    except Exception:  # untraceable control flow: export without folding
        return {}
    modules = dict(model.named_modules())
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or uses[str(node.target)] != 1:
            continue
        bn = modules.get(str(users[0].target))
        if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and uses[str(users[0].target)] == 1:
            pairs[str(node.target)] = str(users[0].target)
    return pairs


def _norm_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode batch-norm as ``y * scale + shift``."""
    # foldable norms track running statistics, so these are tensors (typed Optional)
    running_mean, running_var = cast(Tensor, bn.running_mean), cast(Tensor, bn.running_var)
    inv = torch.rsqrt(running_var.float() + bn.eps)
    scale = bn.weight.float() * inv if bn.affine else inv
    shift = (bn.bias.float() if bn.affine else 0.0) - running_mean.float() * scale
    return scale.detach(), shift.detach()
