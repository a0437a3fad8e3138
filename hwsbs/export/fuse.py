"""Fuse the ReLU / ReLU6 that follows an exported layer into the layer (torch.fx rewrite).

An out-of-place ReLU over an NHWC activation costs as much as a small convolution on a CPU;
inside the oneDNN kernel (post-op) it is free, and elsewhere it becomes an in-place clamp of the
layer's fresh output. The rewrite is a pure function of the traced graph, so loading an export
re-derives it instead of storing it. Models torch.fx cannot trace are left as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import ExportedLayer

__all__ = ["fuse_activations", "activations_after"]

_RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_RELU_METHODS = {"relu": "relu", "relu_": "relu"}


class _ExportedLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a channel-wise layer's concatenation of sub-layers (hwsbs.export.mixed) stays one module
        leaf = isinstance(m, ExportedLayer) or getattr(m, "export_leaf", False)
        return leaf or super().is_leaf_module(m, module_qualified_name)


def _activation(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_function":
        return _RELU_FUNCTIONS.get(node.target)  # type: ignore[arg-type]  # a call_function target is a callable (Target also allows str)
    if node.op == "call_method":
        return _RELU_METHODS.get(str(node.target))
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if isinstance(mod, nn.ReLU6):
            return "relu6"
        if isinstance(mod, nn.ReLU):
            return "relu"
        if isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0):
            return "relu6"
    return None


def _producer(node: fx.Node, modules: dict[str, nn.Module]) -> ExportedLayer | None:
    """The exported layer whose output reaches ``node``'s input only (through Identity modules)."""
    src = node.args[0] if node.args else None
    while isinstance(src, fx.Node) and len(src.users) == 1:
        mod = modules.get(str(src.target)) if src.op == "call_module" else None
        if isinstance(mod, ExportedLayer):
            return mod if mod.activation is None else None
        if not isinstance(mod, nn.Identity):
            return None
        src = src.args[0] if src.args else None
    return None


def fuse_activations(net: nn.Module) -> nn.Module:
    """``net`` as a GraphModule with every fusable ReLU/ReLU6 moved into its exported layer (the
    same module objects, so state_dict keys are unchanged); ``net`` itself when untraceable."""
    try:
        graph = _ExportedLeafTracer().trace(net)
    except Exception:  # untraceable control flow: keep the eager module
        return net
    modules = dict(net.named_modules())
    fused = 0
    for node in list(graph.nodes):
        kind = _activation(node, modules)
        if kind is None:
            continue
        layer = _producer(node, modules)
        if layer is None:
            continue
        layer.fuse_activation(kind)
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        fused += 1
    if not fused:
        return net
    graph.lint()
    return fx.GraphModule(net, graph, class_name=type(net).__name__)


def activations_after(model: nn.Module, leaf: type | tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> dict[str, str]:
    """``{layer name: "relu" | "relu6"}`` for layers whose only reader is (a batch-norm, then) that
    activation: what :func:`fuse_activations` will fuse after export. {} when untraceable."""

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
            return isinstance(m, leaf) or super().is_leaf_module(m, qualified_name)

    try:
        graph = _Tracer().trace(model)
    except Exception:
        return {}
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), leaf):
            continue
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            kind = _activation(user, modules)
            if kind is not None:
                out[str(node.target)] = kind
                break
            mod = modules.get(str(user.target)) if user.op == "call_module" else None
            if not isinstance(mod, (nn.BatchNorm2d, nn.Identity)):
                break
            current = user
    return out
