"""Name -> model builder registry, plus ``package.module:factory`` for a user's own models."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

from torch import nn

from hwsbs.errors import ModelError

__all__ = ["ModelBuilder", "register_model", "list_models", "build_model"]

#: A builder gets the dataset's geometry and returns an untrained model.
ModelBuilder = Callable[..., nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``fn(num_classes, in_channels, image_size) -> nn.Module`` as ``name``."""

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS and _MODELS[name] is not fn:
            warnings.warn(f"model {name!r} is registered again; the new builder replaces the old", stacklevel=2)
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Sorted names of the built-in models."""
    return sorted(_MODELS)


def _import_factory(spec: str) -> ModelBuilder:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"--model {spec!r}: expected a built-in name or 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"--model {spec!r}: cannot import module {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"--model {spec!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def build_model(name: str, num_classes: int, in_channels: int, image_size: tuple[int, int]) -> nn.Module:
    """Build a registered model, or call ``package.module:factory``.

    A user factory is called with the keyword arguments ``num_classes``, ``in_channels`` and
    ``image_size`` when it accepts them, else with ``num_classes`` alone, else with none.

    Raises:
        ModelError: unknown name (listing the known ones), import failure, or a factory that
            does not return an ``nn.Module``.
    """
    if ":" in name:
        factory = _import_factory(name)
        kwargs = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
        for attempt in (kwargs, {"num_classes": num_classes}, {}):
            try:
                model = factory(**attempt)
                break
            except TypeError:
                continue
        else:
            raise ModelError(f"--model {name!r}: the factory accepts none of num_classes, in_channels, image_size")
    else:
        if name not in _MODELS:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(list_models())}")
        model = _MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {name!r}: the builder returned {type(model).__name__}, not an nn.Module")
    return model
