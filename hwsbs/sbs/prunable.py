"""Automatic discovery of prunable layer pairs with torch.fx (method section 3, *(hwsbs)*).

A Conv2d/Linear "producer" is prunable when its output reaches exactly one Conv2d/Linear
"consumer" through batch-norm and element-wise activations only (no residual add, no concat, no
reshape). Depthwise convolutions on the way pass channels through one to one, so they are pruned
with the producer (MobileNetV2's expansion -> depthwise -> projection).
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["PrunableGroup", "find_prunable_groups"]

_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Hardtanh,
    nn.PReLU,
)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.elu,
    F.mish,
    F.dropout,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.sigmoid,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clamp", "clamp_"}


@dataclass
class PrunableGroup:
    """Layers whose channels are removed together when the producer prunes an output group."""

    producer: str  # conv/linear whose output channel groups carry the pruning gates
    consumer: str  # the single conv/linear that reads those channels (its input shrinks)
    norms: list[str] = field(default_factory=list)  # batch-norms on the way (sliced with them)
    passthrough: list[str] = field(default_factory=list)  # depthwise convs on the way (sliced too)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _can_produce(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and m.groups == 1


def _follow(node: fx.Node, modules: dict[str, nn.Module], uses: dict[str, int], producer: str) -> PrunableGroup | None:
    """Walk from ``node`` through single-user element-wise nodes to one consumer, or give up."""
    group = PrunableGroup(producer=producer, consumer="")
    current = node
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None
        user = users[0]
        if user.args[:1] != (current,):
            return None  # the channels enter as a non-primary argument (e.g. a weight)
        if user.op == "call_module":
            mod = modules[str(user.target)]
            stateless = isinstance(mod, _ELEMENTWISE_MODULES) and not list(mod.parameters())
            if uses.get(str(user.target), 0) != 1 and not stateless:
                return None  # a module with channels applied twice cannot be sliced for one path
            if isinstance(mod, _NORM_MODULES):
                group.norms.append(str(user.target))
            elif isinstance(mod, _ELEMENTWISE_MODULES):
                pass
            elif _is_depthwise(mod):
                group.passthrough.append(str(user.target))
            elif isinstance(mod, (nn.Conv2d, nn.Linear)) and getattr(mod, "groups", 1) == 1:
                group.consumer = str(user.target)
                return group
            else:
                return None
        elif user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS:
            pass
        elif user.op == "call_method" and user.target in _ELEMENTWISE_METHODS:
            pass
        elif user.op == "call_function" and user.target is operator.getitem:
            return None
        else:
            return None
        current = user


def find_prunable_groups(model: nn.Module) -> tuple[list[PrunableGroup], str | None]:
    """Trace ``model`` with torch.fx and return its prunable groups.

    Returns:
        ``(groups, reason)``: ``reason`` is None when tracing worked, else why pruning is off
        (the search still chooses bits for every layer).
    """
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python control flow
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ([], f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {first_line[:160]})")
    modules = dict(graph_module.named_modules())
    uses: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
    groups: list[PrunableGroup] = []
    for node in graph_module.graph.nodes:
        if node.op != "call_module":
            continue
        name = str(node.target)
        mod = modules[name]
        if not _can_produce(mod) or uses[name] != 1:
            continue
        group = _follow(node, modules, uses, name)
        if group is None:
            continue
        consumer = modules[group.consumer]
        producer_out = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        consumer_in = consumer.in_channels if isinstance(consumer, nn.Conv2d) else consumer.in_features
        if producer_out != consumer_in:
            continue  # a shape change on the way we did not see (should not happen)
        groups.append(group)
    return groups, None


def warn_untraceable(reason: str) -> None:
    """The one warning a user sees when pruning is off because fx could not trace the model."""
    warnings.warn(f"pruning disabled: {reason}; searching bit widths only", stacklevel=3)
