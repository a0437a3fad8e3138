"""Layer adapters: weight-carrying ops that are a Linear or a Conv2d under another name.

Conversion quantises ``nn.Linear`` and ``nn.Conv2d``. A library op computing the same function
with another layout (Hugging Face's ``Conv1D``: ``x @ W + b`` with ``W`` stored as in x out) is
searched once an adapter turns it into the equivalent module before conversion. Adapters are
registered by class, or by the class's qualified name so the library need not be importable::

    @register_layer_adapter("mylib.layers.FancyLinear")
    def fancy_to_linear(module):
        linear = torch.nn.Linear(module.in_dim, module.out_dim)
        linear.weight.data.copy_(module.w)
        return linear
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

from hwsbs.errors import ModelError

__all__ = ["LayerAdapter", "register_layer_adapter", "list_layer_adapters", "adapt_layers"]

#: Builds the equivalent ``nn.Linear`` or ``nn.Conv2d`` (same weights, same function).
LayerAdapter = Callable[[nn.Module], nn.Module]

_ADAPTERS: dict[str, LayerAdapter] = {}


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_layer_adapter(target: type | str) -> Callable[[LayerAdapter], LayerAdapter]:
    """Decorator registering ``fn(module) -> nn.Linear | nn.Conv2d`` for modules of class ``target``.

    Args:
        target: the class, or its qualified name ``"package.module.Class"``.
    """
    key = target if isinstance(target, str) else _qualified_name(target)

    def decorator(fn: LayerAdapter) -> LayerAdapter:
        if key in _ADAPTERS and _ADAPTERS[key] is not fn:
            warnings.warn(f"layer adapter for {key!r} is registered again; the new one replaces the old", stacklevel=2)
        _ADAPTERS[key] = fn
        return fn

    return decorator


def list_layer_adapters() -> list[str]:
    """Qualified class names with a registered adapter."""
    return sorted(_ADAPTERS)


def _adapter_for(mod: nn.Module) -> LayerAdapter | None:
    for cls in type(mod).__mro__:
        fn = _ADAPTERS.get(_qualified_name(cls))
        if fn is not None:
            return fn
    return None


def adapt_layers(model: nn.Module) -> list[str]:
    """Replace every module with an adapter by its equivalent, in place; returns the names replaced.

    Raises:
        ModelError: an adapter returned something other than an nn.Linear or nn.Conv2d.
    """
    from .convert import set_submodule  # convert imports this module

    replaced = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            continue
        fn = _adapter_for(mod)
        if fn is None:
            continue
        new = fn(mod)
        if not isinstance(new, (nn.Linear, nn.Conv2d)):
            raise ModelError(
                f"layer adapter for {_qualified_name(type(mod))} returned {type(new).__name__}, "
                "not an nn.Linear or nn.Conv2d"
            )
        set_submodule(model, name, new)
        replaced.append(name)
    return replaced


@register_layer_adapter("transformers.pytorch_utils.Conv1D")
def hf_conv1d_to_linear(module: nn.Module) -> nn.Linear:
    """Hugging Face ``Conv1D`` (GPT-2's projections): ``x @ W + b`` with ``W`` of shape (in, out)."""
    weight = module.weight
    bias = module.bias
    assert isinstance(weight, torch.Tensor)  # Conv1D always has a weight
    linear = nn.Linear(
        weight.shape[0], weight.shape[1], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if isinstance(bias, torch.Tensor):
            linear.bias.copy_(bias)
    return linear
